//! Access rules at the doors whose protocols carry no credentials (memcached,
//! syslog): a client is judged by its address alone.

use std::net::IpAddr;

use crate::AppState;
use crate::acl::{Category, Denial, Presented};

/// Whether the client at `peer` may use the routes of `category` with no
/// credentials; otherwise why not, in words for the client or the log. A
/// category that asks for a password or a token refuses every such client.
pub fn check(state: &AppState, category: Category, peer: IpAddr) -> Result<(), String> {
    let rules = state.access.rules();
    if rules.is_open() {
        return Ok(());
    }
    let client = state.access.client(peer, None).to_canonical();
    match rules.decide(category, client, &Presented::default()) {
        Ok(_) => Ok(()),
        Err(Denial::Address) => Err(format!(
            "the address {client} may not use the {category} routes"
        )),
        Err(Denial::Credentials { .. }) => Err(format!(
            "the {category} routes need credentials, which this protocol cannot carry"
        )),
    }
}
