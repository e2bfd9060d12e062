use super::*;

#[test]
fn margin_scales_with_lifetime() {
    assert_eq!(
        refresh_margin(Duration::from_secs(20)),
        Duration::from_secs(2)
    );
    assert_eq!(
        refresh_margin(Duration::from_secs(3600)),
        Duration::from_secs(60)
    );
}

#[test]
fn only_a_plain_oauth_error_code_is_kept() {
    let code = |body: &str| oauth_error_code(body.as_bytes(), Some("hunter2"));
    assert_eq!(
        code(r#"{"error":"invalid_client","error_description":"Basic dGVzdDpodW50ZXIy"}"#),
        Some("invalid_client".into())
    );
    for refused in [
        r#"{"error":"Basic dGVzdDpodW50ZXIy"}"#,
        r#"{"error":"dGVzdDpodW50ZXIy"}"#,
        r#"{"error":"invalid client: Authorization: Basic x"}"#,
        r#"{"error":"bad\u001b[2J"}"#,
        r#"{"error":"leaked_hunter2"}"#,
        r#"{"error":""}"#,
        r#"{"error":42}"#,
        r#"{"error":{"code":"invalid_client"}}"#,
        "Authorization: Basic dGVzdDpodW50ZXIy",
        "",
    ] {
        assert_eq!(code(refused), None, "{refused}");
    }
    let long = format!(r#"{{"error":"{}"}}"#, "a".repeat(MAX_ERROR_CODE + 1));
    assert_eq!(code(&long), None);
    let err = TokenError::Refused {
        url: "https://idp.example/token".into(),
        status: 401,
        oauth_error: Some("invalid_client".into()),
    };
    assert_eq!(
        err.to_string(),
        "token endpoint https://idp.example/token answered HTTP 401 (OAuth error 'invalid_client')"
    );
    assert_eq!(
        err.for_sender(),
        "the portal could not get an OAuth2 token (the token endpoint answered HTTP 401); see the portal's log"
    );
}

#[test]
fn form_encoding() {
    assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
}

#[test]
fn lifetime_from_field_string_or_default() {
    let r = TokenResponse {
        access_token: "opaque".into(),
        expires_in: Some(serde_json::json!(42)),
    };
    assert_eq!(lifetime_of(&r), Duration::from_secs(42));
    let r = TokenResponse {
        access_token: "opaque".into(),
        expires_in: Some(serde_json::json!("17")),
    };
    assert_eq!(lifetime_of(&r), Duration::from_secs(17));
    let r = TokenResponse {
        access_token: "opaque".into(),
        expires_in: None,
    };
    assert_eq!(lifetime_of(&r), DEFAULT_LIFETIME);
}

#[test]
fn lifetime_from_a_jwt_without_expires_in() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let jwt = format!(
        "{}.{}.c2ln",
        b64(serde_json::json!({"alg": "HS256", "typ": "JWT"})),
        b64(serde_json::json!({"exp": now + 120, "sub": "portal"}))
    );
    let r = TokenResponse {
        access_token: jwt,
        expires_in: None,
    };
    let got = lifetime_of(&r).as_secs();
    assert!((118..=120).contains(&got), "{got}");
}

/// A fresh RSA key pair: (PEM, public key PEM).
fn rsa_key() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    crate::test_support::rsa_key_pair(dir.path())
}

fn check_assertion(signer: &AssertionSigner, public: jsonwebtoken::DecodingKey) {
    let token_url = "https://idp.example/oauth2/token";
    assert_eq!(signer.audience(), token_url);
    let jwt = signer.sign("portal-client").unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, signer.algorithm());
    assert_eq!(header.kid.as_deref(), Some("key-7"));
    let mut v = jsonwebtoken::Validation::new(signer.algorithm());
    v.set_audience(&[token_url]);
    v.set_issuer(&["portal-client"]);
    v.sub = Some("portal-client".into());
    v.leeway = 0;
    let claims = jsonwebtoken::decode::<AssertionClaims>(&jwt, &public, &v)
        .unwrap()
        .claims;
    assert_eq!(claims.iss, "portal-client");
    assert_eq!(claims.sub, "portal-client");
    assert_eq!(claims.aud, token_url);
    assert_eq!(claims.exp - claims.iat, ASSERTION_LIFETIME.as_secs());
    assert!(
        claims.iat.abs_diff(crate::protocol::signing::unix_now()) <= 5,
        "{}",
        claims.iat
    );
    assert!(claims.jti.parse::<ulid::Ulid>().is_ok(), "{}", claims.jti);
    let again = jsonwebtoken::decode::<AssertionClaims>(
        &signer.sign("portal-client").unwrap(),
        &public,
        &v,
    )
    .unwrap()
    .claims;
    assert_ne!(again.jti, claims.jti, "every assertion has its own jti");
}

#[test]
fn es256_assertion_claims_verify_with_the_public_key() {
    let (private, public) = crate::test_support::ec_key_pair();
    let signer = AssertionSigner::from_pem(
        private.as_bytes(),
        None,
        Some("key-7".into()),
        "https://idp.example/oauth2/token".into(),
    )
    .unwrap();
    assert_eq!(signer.algorithm(), Algorithm::ES256);
    check_assertion(
        &signer,
        jsonwebtoken::DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
    );
}

#[test]
fn rs256_assertion_claims_verify_with_the_public_key() {
    let (private, public) = rsa_key();
    let signer = AssertionSigner::from_pem(
        private.as_bytes(),
        None,
        Some("key-7".into()),
        "https://idp.example/oauth2/token".into(),
    )
    .unwrap();
    assert_eq!(signer.algorithm(), Algorithm::RS256);
    let public = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
    check_assertion(&signer, public.clone());
    let ps = AssertionSigner::from_pem(
        private.as_bytes(),
        Some(Algorithm::PS256),
        Some("key-7".into()),
        "https://idp.example/oauth2/token".into(),
    )
    .unwrap();
    check_assertion(&ps, public);
}

#[test]
fn unusable_assertion_keys_name_the_setting() {
    let (ec, _) = crate::test_support::ec_key_pair();
    let aud = || "https://idp.example/token".to_string();
    let cases: [(&[u8], Option<Algorithm>); 4] = [
        (b"not a key", None),
        (ec.as_bytes(), Some(Algorithm::RS256)),
        (ec.as_bytes(), Some(Algorithm::ES384)),
        (
            b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n",
            None,
        ),
    ];
    for (pem, alg) in cases {
        let err = AssertionSigner::from_pem(pem, alg, None, aud()).unwrap_err();
        assert_eq!(err.setting, "OAUTH2_CLIENT_ASSERTION_KEY_FILE", "{err}");
    }
    let err = parse_assertion_alg("HS256").unwrap_err();
    assert!(
        err.to_string().starts_with("OAUTH2_CLIENT_ASSERTION_ALG"),
        "{err}"
    );
    assert_eq!(parse_assertion_alg("es256").unwrap(), Algorithm::ES256);
    assert_eq!(parse_assertion_alg("PS512").unwrap(), Algorithm::PS512);
}

#[test]
fn debug_output_holds_no_secret_or_key() {
    let (private, _) = crate::test_support::ec_key_pair();
    let signer =
        AssertionSigner::from_pem(private.as_bytes(), None, None, "https://t".into()).unwrap();
    let key_line = private.lines().nth(1).unwrap().to_string();
    for credentials in [
        ClientCredentials::SecretBasic("s3cret-value".into()),
        ClientCredentials::SecretPost("s3cret-value".into()),
        ClientCredentials::PrivateKeyJwt(signer),
    ] {
        let cfg = OAuthConfig {
            token_url: "https://t".into(),
            client_id: "c".into(),
            credentials,
            scope: None,
            audience: None,
            refresh_statuses: vec![StatusCode::UNAUTHORIZED],
            timeout: Duration::from_secs(1),
        };
        let text = format!("{cfg:?} {cfg:#?}");
        assert!(!text.contains("s3cret-value"), "{text}");
        assert!(!text.contains(&key_line), "{text}");
        assert!(!text.contains(&key_line[..16]), "{text}");
    }
}

#[test]
fn auth_method_parses() {
    assert_eq!(
        "client_secret_post".parse::<AuthMethod>(),
        Ok(AuthMethod::ClientSecretPost)
    );
    assert_eq!(
        "basic".parse::<AuthMethod>(),
        Ok(AuthMethod::ClientSecretBasic)
    );
    assert_eq!(
        "private_key_jwt".parse::<AuthMethod>(),
        Ok(AuthMethod::PrivateKeyJwt)
    );
    assert!("jwt".parse::<AuthMethod>().is_err());
}
