//! Bearer tokens: each names a role; readers read, writers also write.

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read every entity, its history and the change log.
    Read,
    /// Read, and create, change and delete entities.
    Write,
}

/// One token the API accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// What the token may do.
    pub role: Role,
    /// The environment variable holding the token (never the token itself, which would end
    /// up in files and process listings).
    pub token_env: String,
}

/// The tokens, kept as SHA-256 digests: a request's token is hashed and compared with each,
/// so neither the tokens nor the time a comparison takes say anything about them.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    digests: Vec<([u8; 32], Role)>,
}

impl Tokens {
    /// The tokens `configs` name, read through `env`; an error names the variable unset.
    pub fn load(
        configs: &[TokenConfig],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut digests = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let token = env(&config.token_env)
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    format!("tokens[{i}].token_env: ${} is not set", config.token_env)
                })?;
            digests.push((digest(&token), config.role));
        }
        Ok(Self { digests })
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks the request's `Authorization: Bearer` token allows `needed`: 401 without a known
    /// token, 403 with a token whose role is not enough.
    pub fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<Role, ApiError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.authorize_value(value, needed)
    }

    /// The same, for the value of an `Authorization` header (none: no header).
    pub fn authorize_value(&self, value: Option<&str>, needed: Role) -> Result<Role, ApiError> {
        let token = value
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthenticated)?;
        let presented = digest(token);
        let role = self
            .digests
            .iter()
            .fold(None, |found, (known, role)| {
                // Every digest is compared, so the time taken says nothing of which matched.
                let equal = known
                    .iter()
                    .zip(presented.iter())
                    .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
                found.or(equal.then_some(*role))
            })
            .ok_or(ApiError::Unauthenticated)?;
        if role < needed {
            return Err(ApiError::Forbidden);
        }
        Ok(role)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn roles_allow_what_they_name() {
        let configs = [
            TokenConfig {
                role: Role::Read,
                token_env: "R".into(),
            },
            TokenConfig {
                role: Role::Write,
                token_env: "W".into(),
            },
        ];
        let tokens = Tokens::load(&configs, |name| Some(format!("secret-{name}"))).unwrap();
        assert_eq!(
            tokens.authorize(&headers("secret-R"), Role::Read).unwrap(),
            Role::Read
        );
        assert!(matches!(
            tokens.authorize(&headers("secret-R"), Role::Write),
            Err(ApiError::Forbidden)
        ));
        assert_eq!(
            tokens.authorize(&headers("secret-W"), Role::Write).unwrap(),
            Role::Write
        );
        assert!(matches!(
            tokens.authorize(&headers("nope"), Role::Read),
            Err(ApiError::Unauthenticated)
        ));
        assert!(matches!(
            tokens.authorize(&HeaderMap::new(), Role::Read),
            Err(ApiError::Unauthenticated)
        ));
        let unset = Tokens::load(&configs, |_| None).unwrap_err();
        assert_eq!(unset, "tokens[0].token_env: $R is not set");
    }
}
