//! Checks on JSON Web Key Sets an operator supplies or an issuer publishes: public asymmetric
//! keys only.

/// Refuses a JWKS that is malformed, holds a symmetric key, or holds private key material.
pub fn check_public_jwks(jwks: &serde_json::Value) -> Result<(), String> {
    let keys = jwks.get("keys").and_then(|k| k.as_array()).ok_or("must be a JWKS object with a \"keys\" array")?;
    if keys.is_empty() {
        return Err("\"keys\" is empty".into());
    }
    for (i, key) in keys.iter().enumerate() {
        let kty = key.get("kty").and_then(|v| v.as_str()).ok_or(format!("keys[{i}]: missing \"kty\""))?;
        match kty {
            "RSA" | "EC" | "OKP" => {}
            "oct" => return Err(format!("keys[{i}]: symmetric (oct) keys are refused")),
            other => return Err(format!("keys[{i}]: unsupported key type {other:?}")),
        }
        // "d" is the private exponent / scalar for every asymmetric key type.
        if key.get("d").is_some() {
            return Err(format!("keys[{i}]: holds private key material; publish public keys only"));
        }
        if key.get("kid").and_then(|v| v.as_str()).is_none_or(str::is_empty) {
            return Err(format!("keys[{i}]: missing \"kid\" (keys are selected by kid)"));
        }
    }
    Ok(())
}

/// The key ids in a JWKS, for status displays.
pub fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks.get("keys")
        .and_then(|k| k.as_array())
        .map(|keys| keys.iter().filter_map(|k| k.get("kid")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}
