"""A test identity provider: OIDC discovery and a JWKS for keys generated at start, and a /mint
endpoint that signs tokens with PyJWT, a JOSE implementation other than Warden's.

Usage: idp.py HOST PORT

POST /mint {"claims": {...}, "key": NAME, "kid": optional override, "attack": optional}
  NAME:   es256 | es384 | rs256 | ps256 | eddsa | rogue (a P-256 key that is not published)
  attack: "none" (unsigned) | "hs256-public-key" (HMAC keyed with the published public key)
  → the compact token as text/plain
POST /rotate {"kid": KID} publishes a new P-256 key as KID, minted with as key "KID"
POST /dpop {"client": NAME, "htm", "htu", "token", "iat": optional} → {"proof", "jkt"}: a DPoP
  proof (RFC 9449) signed by client NAME's own P-256 key (made on first use), and that key's
  RFC 7638 thumbprint, computed here independently of Warden
"""

import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

KEYS = {
    # name: (private key, kid, alg, published)
    "es256": (ec.generate_private_key(ec.SECP256R1()), "es256-1", "ES256", True),
    "es384": (ec.generate_private_key(ec.SECP384R1()), "es384-1", "ES384", True),
    "rs256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1", "RS256", True),
    "eddsa": (ed25519.Ed25519PrivateKey.generate(), "ed-1", "EdDSA", True),
    "rogue": (ec.generate_private_key(ec.SECP256R1()), "es256-1", "ES256", False),
}
KEYS["ps256"] = (KEYS["rs256"][0], "rsa-1", "PS256", False)  # same RSA key, PSS padding


def public_jwk(name):
    key, kid, alg, _ = KEYS[name]
    if alg.startswith("ES"):
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    elif alg == "EdDSA":
        jwk = json.loads(OKPAlgorithm.to_jwk(key.public_key()))
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return jwk


JWKS = {"keys": [public_jwk(n) for n, (_, _, _, published) in KEYS.items() if published]}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(request):
    claims = request["claims"]
    name = request.get("key", "es256")
    key, kid, alg, _ = KEYS[name]
    kid = request.get("kid", kid)
    attack = request.get("attack")
    if attack == "none":
        header = {"alg": "none", "typ": "JWT", "kid": kid}
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    if attack == "hs256-public-key":
        # What a confused verifier would accept: HMAC keyed with the public key it publishes.
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        secret = json.dumps(public_jwk(name)).encode()
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


CLIENTS = {}


def dpop(request):
    name = request["client"]
    if name not in CLIENTS:
        CLIENTS[name] = ec.generate_private_key(ec.SECP256R1())
    key = CLIENTS[name]
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    canonical = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    jkt = b64(hashlib.sha256(canonical.encode()).digest())
    claims = {
        "jti": b64(hashlib.sha256(f"{name}{time.time_ns()}".encode()).digest()[:12]),
        "htm": request["htm"],
        "htu": request["htu"],
        "iat": request.get("iat", int(time.time())),
    }
    if request.get("token"):  # a proof sent to a token endpoint has no access token to hash
        claims["ath"] = b64(hashlib.sha256(request["token"].encode()).digest())
    proof = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})
    return {"proof": proof, "jkt": jkt}


class Handler(BaseHTTPRequestHandler):
    def send(self, status, body, content_type="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        issuer = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        if self.path == "/.well-known/openid-configuration":
            self.send(200, json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/jwks"}))
        elif self.path == "/jwks":
            self.send(200, json.dumps(JWKS))
        else:
            self.send(404, "{}")

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/mint":
            self.send(200, mint(request), "text/plain")
        elif self.path == "/dpop":
            self.send(200, json.dumps(dpop(request)))
        elif self.path == "/rotate":
            kid = request["kid"]
            KEYS[kid] = (ec.generate_private_key(ec.SECP256R1()), kid, "ES256", True)
            JWKS["keys"].append(public_jwk(kid))
            self.send(200, "{}")
        else:
            self.send(404, "{}")

    def log_message(self, format, *args):
        sys.stderr.write("idp: " + (format % args) + "\n")


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer((host, port), Handler).serve_forever()
