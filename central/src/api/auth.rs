//! Who is calling: the bearer token, looked up by its hash.

use ferry_api::keys;
use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};

use super::{ApiError, AppState};
use crate::{
    store::Store as _,
    tokens::{self, Role},
};

/// The caller's role, from its token.
pub struct Caller(pub Role);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or(ApiError::NoToken)?;
        let record = state
            .store
            .get(&tokens::key(token))?
            .ok_or(ApiError::BadToken)?;
        let role = serde_json::from_slice(&record.value).map_err(|_| ApiError::BadToken)?;
        Ok(Caller(role))
    }
}

impl Caller {
    /// Only the admin.
    pub fn admin(&self, action: &str) -> Result<(), ApiError> {
        match self.0 {
            Role::Admin => Ok(()),
            _ => Err(forbidden(action)),
        }
    }

    /// Only the agent of `server`: `what` names the attempt in the refusal.
    pub fn agent_of(&self, server: &str, what: &str) -> Result<(), ApiError> {
        match &self.0 {
            Role::Agent { server: own } if own == server => Ok(()),
            _ => Err(forbidden(&format!(
                "{what} for server {server:?} (agents act for their own)"
            ))),
        }
    }

    /// Reads of `prefix`: the admin anything; an agent what its server needs (the other
    /// servers, for the mesh; its own desired state and operator actions; DNS records; TLS
    /// certificates for the ingress).
    pub fn may_read(&self, prefix: &str) -> Result<(), ApiError> {
        match &self.0 {
            Role::Admin => Ok(()),
            Role::Agent { server } => {
                let own = keys::desired_of(server);
                let asked = keys::actions_of(server);
                // Every server's ingress terminates TLS for every stack.
                let allowed = prefix.starts_with(keys::SERVERS)
                    || prefix.starts_with(keys::RECORDS)
                    || prefix.starts_with(keys::CERTIFICATES)
                    || prefix.starts_with(&own)
                    || prefix.starts_with(&asked);
                if allowed {
                    Ok(())
                } else {
                    Err(forbidden(&format!(
                        "read {prefix:?} (agents read servers/, records/, certificates/, {own} and {asked})"
                    )))
                }
            }
            Role::Join => Err(forbidden(&format!(
                "read {prefix:?} (a join token only joins)"
            ))),
        }
    }
}

pub fn forbidden(action: &str) -> ApiError {
    ApiError::Forbidden {
        action: action.into(),
    }
}

/// Whether `token` is an agent token for some server; used to revoke on removal.
pub fn agent_token_key(server: &str) -> String {
    keys::agent_token(server)
}
