//! The prost codec with small initial buffers. Every long-lived stream keeps its encode and
//! decode buffers for its whole life; tonic's 8 KiB defaults cost the control plane 16 KiB per
//! connected agent. Buffers still grow to whatever a message needs.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial buffer size: a heartbeat or an ACK fits many times over.
const INITIAL_BUFFER: usize = 1024;
/// tonic's default yield threshold.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `application/grpc+proto` with [`INITIAL_BUFFER`]-byte initial buffers.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }
}
