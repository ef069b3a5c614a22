//! Who may use the SQS door: the address rules of the category each action
//! answers to (as its HTTP equivalent), and, when `[sqs:<id>]` keys are
//! configured, a verified SigV4 signature whose key's rights are checked
//! like a token's. Without keys, signatures are taken unverified.

use std::net::IpAddr;

use axum::http::request::Parts;

use super::error::{Code, SqsError};
use super::sign::{self, Authorization, Signed};
use super::{Need, header};
use crate::AppState;
use crate::acl::Grant;

/// Lets a request in, or says why not.
pub fn admit(
    state: &AppState,
    need: Need,
    peer: IpAddr,
    parts: &Parts,
    body: &[u8],
) -> Result<Grant, SqsError> {
    let rules = state.access.rules();
    if rules.is_open() {
        return Ok(Grant::Full);
    }
    let client = state
        .access
        .client(peer, header(&parts.headers, "x-forwarded-for"));
    if !rules.admits(need.category, client) {
        return Err(SqsError::new(
            Code::AccessDenied,
            format!(
                "The address {client} may not use the {} actions.",
                need.category
            ),
        ));
    }
    if rules.has_sqs_keys() {
        let value = header(&parts.headers, "authorization").ok_or_else(|| {
            SqsError::new(
                Code::MissingAuthenticationToken,
                "The request must be signed with an access key (AWS Signature Version 4).",
            )
        })?;
        let auth = Authorization::parse(value)?;
        let key = rules.sqs_key(&auth.key_id).ok_or_else(|| {
            SqsError::new(
                Code::InvalidClientTokenId,
                "The security token included in the request is invalid.",
            )
        })?;
        let signed = Signed {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body,
        };
        let now = crate::store::now_millis() / 1000;
        sign::verify(&signed, &auth, &key.secret, now)?;
        return Ok(Grant::Token(key.grant.clone()));
    }
    if rules.needs_credentials(need.category) {
        return Err(SqsError::new(
            Code::AccessDenied,
            format!(
                "The {} actions need credentials, which the SQS door takes as access keys: \
                 add an [sqs:<access key id>] section to the ACL file.",
                need.category
            ),
        ));
    }
    Ok(Grant::Full)
}
