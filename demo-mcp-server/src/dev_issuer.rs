//! `warden-dev-issuer`: a development identity issuer for the local demo, standing in for what
//! a platform gives its workloads (a Kubernetes service-account token, a cloud instance
//! identity): it mints a short-lived signed identity token for whoever asks, which is exactly
//! why it runs on loopback only and says so at start. A workload holds no secret: it asks for
//! its identity token and exchanges it at Warden's token service for a task token.
//!
//! `GET /jwks.json`: its public key (ES256, generated at start, never written down).
//! `POST /token` with `{"sub": ..., "aud": ...}`: `{"access_token": <JWT>, "expires_in": 300}`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// A development identity issuer on loopback.
#[derive(clap::Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to listen: a loopback address only.
    #[arg(long, default_value = "127.0.0.1:17600")]
    listen: SocketAddr,
    /// The `iss` of its tokens (a TrustedIssuer names it; nothing fetches it).
    #[arg(long, default_value = "https://dev-issuer.warden.invalid")]
    issuer: String,
}

/// Token lifetime, seconds.
const LIFETIME: u64 = 300;
const KID: &str = "dev-1";

struct Issuer {
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    jwks: Value,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    if !args.listen.ip().is_loopback() {
        return Err(format!("{} is not a loopback address: a development issuer mints for anyone", args.listen).into());
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| "key generation")?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "key generation")?;
    // An uncompressed point: 0x04, x, y.
    let point = pair.public_key().as_ref();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let state = Arc::new(Issuer { issuer: args.issuer, key, jwks });
    let app = axum::Router::new()
        .route(
            "/jwks.json",
            axum::routing::get(|State(s): State<Arc<Issuer>>| async move { axum::Json(s.jwks.clone()) }),
        )
        .route("/token", axum::routing::post(token))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "warden-dev-issuer on http://{}: A DEVELOPMENT ISSUER. It gives an identity token to anyone who \
         asks, on loopback only. Never trust it outside a demo.",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Mints `{"sub", "aud"}`'s identity token.
async fn token(
    State(issuer): State<Arc<Issuer>>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, (StatusCode, String)> {
    let request: Value = serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let (Some(sub), Some(aud)) = (request["sub"].as_str(), request["aud"].as_str()) else {
        return Err((StatusCode::BAD_REQUEST, "give sub and aud".into()));
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = json!({
        "iss": issuer.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + LIFETIME,
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KID.into());
    let token = jsonwebtoken::encode(&header, &claims, &issuer.key)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": LIFETIME})))
}
