//! API errors as the client sees them: a status and a JSON body saying what was wrong and
//! what to do.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ferry_api::types::{ErrorBody, Reason};

use crate::{
    sources::SourceError,
    state::{CertificateError, DatasourceError, ServerError, StackError, VariableError},
    store::StoreError,
};

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or malformed Authorization header; send `Authorization: Bearer <token>`")]
    NoToken,
    #[error("unknown token; use the token ferry-central init printed, or the agent's own")]
    BadToken,
    #[error("this token may not {action}")]
    Forbidden { action: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Variable(VariableError),
    /// Central's own failure, not the request's: a 500.
    #[error("central failed to {what}: {source}")]
    Internal {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored value central cannot read: a 500 naming the key, never a default.
    #[error("central's record at {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Central failed to `what`, because of `source`.
    pub fn internal(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            what,
            source: source.into(),
        }
    }
}

/// Decodes the value stored at `key`; an unreadable one is [`ApiError::Corrupt`].
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(value).map_err(|source| ApiError::Corrupt {
        key: key.to_string(),
        source,
    })
}

impl From<crate::deploy::PlaceError> for ApiError {
    fn from(e: crate::deploy::PlaceError) -> Self {
        match e {
            crate::deploy::PlaceError::Stack(e) => Self::Stack(e),
            // The count or the limits ask for what the servers cannot hold.
            crate::deploy::PlaceError::Placement(e) => Self::BadRequest(e.to_string()),
        }
    }
}

impl From<DatasourceError> for ApiError {
    fn from(e: DatasourceError) -> Self {
        match e {
            DatasourceError::Stack(e) => Self::Stack(e),
            DatasourceError::Invalid(why) => Self::BadRequest(why),
        }
    }
}

impl From<CertificateError> for ApiError {
    fn from(e: CertificateError) -> Self {
        match e {
            CertificateError::Stack(e) => Self::Stack(e),
            CertificateError::Invalid(why) => Self::BadRequest(why),
        }
    }
}

impl From<VariableError> for ApiError {
    fn from(e: VariableError) -> Self {
        match e {
            VariableError::Stack(e) => Self::Stack(e),
            other => Self::Variable(other),
        }
    }
}

impl ApiError {
    /// The reason a client acts on, if any.
    pub fn reason(&self) -> Option<Reason> {
        matches!(
            self,
            Self::Store(
                StoreError::Compacted { .. }
                    | StoreError::FutureRevision { .. }
                    | StoreError::OtherStore
            )
        )
        .then_some(Reason::Compacted)
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::NoToken | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Server(
                ServerError::Exists { .. }
                | ServerError::EndpointTaken { .. }
                | ServerError::KeyTaken { .. }
                | ServerError::StaleRotation { .. },
            ) => StatusCode::CONFLICT,
            Self::Server(ServerError::Unknown { .. }) => StatusCode::NOT_FOUND,
            Self::Server(ServerError::BadName { .. }) => StatusCode::BAD_REQUEST,
            Self::Server(ServerError::Exhausted { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Store(
                StoreError::Compacted { .. }
                | StoreError::FutureRevision { .. }
                | StoreError::OtherStore,
            ) => StatusCode::GONE,
            Self::Store(StoreError::BadKey { .. } | StoreError::TooLarge { .. }) => {
                StatusCode::BAD_REQUEST
            }
            Self::Stack(StackError::BadName { .. }) => StatusCode::BAD_REQUEST,
            Self::Stack(StackError::UnknownStack { .. } | StackError::UnknownGeneration { .. }) => {
                StatusCode::NOT_FOUND
            }
            Self::Stack(StackError::WrongPhase { .. } | StackError::NothingToRollBack { .. }) => {
                StatusCode::CONFLICT
            }
            Self::Source(SourceError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Source(SourceError::Io { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Source(_) => StatusCode::BAD_REQUEST,
            Self::Variable(VariableError::Invalid(_)) => StatusCode::BAD_REQUEST,
            Self::Variable(VariableError::Missing { .. }) => StatusCode::CONFLICT,
            Self::Server(_)
            | Self::Store(_)
            | Self::Stack(_)
            | Self::Variable(_)
            | Self::Internal { .. }
            | Self::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            reason: self.reason(),
        };
        (status, Json(body)).into_response()
    }
}
