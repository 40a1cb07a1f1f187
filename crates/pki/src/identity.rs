//! Who is calling: the one place that turns a verified peer certificate into
//! an [`Identity`] and decides whether its role may use an API.
//!
//! Identity always comes from the certificate's single URI SAN, never from a
//! request field. Servers install [`authorize`] as the interceptor of each
//! service; handlers then read the caller with [`caller_from_extensions`].

use liaison_types::{Identity, Role};
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

use crate::PkiError;

/// The identity named by a DER certificate of federation `federation`.
///
/// The certificate must carry exactly one URI SAN, that URI must be a
/// liaison identity, and its federation must be `federation`. This does not
/// verify the certificate chain: rustls has done that during the handshake.
pub fn identity_from_der(cert_der: &[u8], federation: &str) -> Result<Identity, PkiError> {
    let identity = any_identity_from_der(cert_der)?;
    if identity.federation != federation {
        return Err(PkiError::ForeignFederation {
            identity: identity.uri(),
            found: identity.federation,
            expected: federation.to_owned(),
        });
    }
    Ok(identity)
}

/// The identity named by a DER certificate, whatever its federation: for a
/// party reading its own certificate.
pub(crate) fn any_identity_from_der(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| {
        PkiError::BadCertificate(format!("subject alternative name extension: {e}"))
    })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(PkiError::NoUriSan),
        [one] => *one,
        several => return Err(PkiError::SeveralUriSans(several.len())),
    };
    Ok(uri.parse()?)
}

/// The identity of the client that sent `req`, from its verified
/// certificate.
///
/// Fails with `UNAUTHENTICATED` when the client presented no certificate or
/// when the certificate names no valid identity of `federation`.
pub fn caller<T>(req: &Request<T>, federation: &str) -> Result<Identity, Status> {
    let certs = req.peer_certs().unwrap_or_default();
    let Some(leaf) = certs.first() else {
        return Err(Status::unauthenticated(
            "no client certificate presented; connect with a certificate issued by the federation CA",
        ));
    };
    identity_from_der(leaf, federation)
        .map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))
}

/// An interceptor that admits only callers whose role is in `allowed`.
///
/// It resolves the caller with [`caller`], refuses other roles with
/// `PERMISSION_DENIED`, and stores the caller's [`Identity`] in the request
/// extensions, where handlers read it with [`caller_from_extensions`].
pub fn authorize(
    federation: String,
    allowed: &'static [Role],
) -> impl tonic::service::Interceptor + Clone {
    move |mut req: Request<()>| {
        let identity = caller(&req, &federation)?;
        if !allowed.contains(&identity.role) {
            tracing::info!(caller = %identity, "refused a role this api is not open to");
            return Err(Status::permission_denied(format!(
                "role '{}' may not call this api; it is open to {} certificates",
                identity.role,
                role_list(allowed)
            )));
        }
        req.extensions_mut().insert(identity);
        Ok(req)
    }
}

/// The caller stored by [`authorize`].
///
/// Fails with `INTERNAL` when the service was not wrapped in the interceptor:
/// that is our bug, not the caller's.
pub fn caller_from_extensions<T>(req: &Request<T>) -> Result<&Identity, Status> {
    req.extensions().get::<Identity>().ok_or_else(|| {
        Status::internal(
            "caller identity missing; the service is not behind the authorize interceptor",
        )
    })
}

/// `node`, `hub and node`, `hub, node and admin`; `no` when empty.
fn role_list(roles: &[Role]) -> String {
    match roles {
        [] => "no".to_owned(),
        [one] => one.as_str().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(|r| r.as_str()).collect();
            format!("{} and {}", init.join(", "), last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_lists_read_naturally() {
        assert_eq!(role_list(&[]), "no");
        assert_eq!(role_list(&[Role::Node]), "node");
        assert_eq!(role_list(&[Role::Hub, Role::Node]), "hub and node");
        assert_eq!(
            role_list(&[Role::Hub, Role::Node, Role::Admin]),
            "hub, node and admin"
        );
    }
}
