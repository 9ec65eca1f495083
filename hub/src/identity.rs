//! Registration bound to an EC2 instance: checks an instance identity document against AWS's
//! public RSA certificate for the document's Region (RSA PKCS#1 v1.5 over SHA-256 of the
//! document's bytes, AWS's "base64-encoded signature"), then against an agent type's allowed
//! accounts and Regions. A registration token copied off the instance is then worthless: only
//! the instance can fetch a signed document naming itself, and the hub lets each instance id
//! register once (`registered_instances` in the store; that check is the caller's).
//!
//! The certificates ship with the hub (`hub/certs/aws-identity-rsa.pem`, from AWS's
//! "AWS public certificates for instance identity document signatures" page) and can be
//! replaced by a file in the same format, for tests and for partitions not listed. Only the
//! public key of a certificate is used, as AWS's own verification procedure does. Everything
//! here is pure: text in, a verdict out.

use base64::Engine;
use protocol::views::IdentityPolicy;
use protocol::InstanceIdentity;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use thiserror::Error;
use x509_cert::der::{Decode, Encode};

/// AWS's RSA certificates for the base64-encoded signature, one per Region.
pub(crate) const AWS_CERTIFICATES: &str = include_str!("../certs/aws-identity-rsa.pem");

/// Why a certificate file could not be read.
#[derive(Debug, Error)]
pub enum CertificateError {
    #[error("line {line}: a certificate is not closed by -----END CERTIFICATE-----")]
    Unterminated { line: usize },
    #[error("line {line}: the certificate is not base64: {source}")]
    Base64 {
        line: usize,
        #[source]
        source: base64::DecodeError,
    },
    #[error("line {line}: not an X.509 certificate: {source}")]
    X509 {
        line: usize,
        #[source]
        source: x509_cert::der::Error,
    },
    #[error("line {line}: the certificate's key is not an RSA public key: {source}")]
    NotRsa {
        line: usize,
        #[source]
        source: rsa::pkcs8::spki::Error,
    },
    #[error("the file holds no certificate")]
    Empty,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why an identity was refused. Each message is what the registering agent is told.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("this agent type requires the EC2 instance identity document: start the agent with --ec2 on the instance")]
    Missing,
    #[error("the instance identity signature is not base64")]
    SignatureEncoding,
    #[error("the instance identity document is not valid: {0}")]
    Document(String),
    #[error("no AWS certificate for Region '{0}'")]
    UnknownRegion(String),
    #[error(
        "the instance identity document's signature does not verify with AWS's certificate for {0}"
    )]
    BadSignature(String),
    #[error("account {0} may not register agents of this type")]
    AccountNotAllowed(String),
    #[error("Region {0} may not register agents of this type")]
    RegionNotAllowed(String),
}

/// The fields of an instance identity document the hub uses (AWS's names).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityDocument {
    pub instance_id: String,
    pub account_id: String,
    pub region: String,
    /// When the instance was launched (RFC 3339, e.g. `2026-12-01T19:14:02Z`); the console's
    /// job timeline shows it.
    #[serde(default)]
    pub pending_time: Option<String>,
}

impl IdentityDocument {
    /// The instance's launch time in Unix seconds, when the document has a readable one.
    pub fn launched_at(&self) -> Option<i64> {
        let text = self.pending_time.as_deref()?;
        text.parse::<jiff::Timestamp>()
            .ok()
            .map(|timestamp| timestamp.as_second())
    }
}

/// The public keys that sign identity documents: per Region, and a default for the others.
#[derive(Debug, Clone)]
pub struct Certificates {
    by_region: HashMap<String, RsaPublicKey>,
    default: Option<RsaPublicKey>,
}

impl Certificates {
    /// The certificates shipped with the hub (parsed once).
    pub fn aws() -> &'static Certificates {
        static SHIPPED: std::sync::OnceLock<Certificates> = std::sync::OnceLock::new();
        SHIPPED.get_or_init(|| {
            Certificates::parse(AWS_CERTIFICATES).expect("the shipped AWS certificates parse")
        })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Certificates, CertificateError> {
        let text = std::fs::read_to_string(path).map_err(|source| CertificateError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Certificates::parse(&text)
    }

    /// PEM certificates, each optionally preceded by a `region: NAME` line; one without a
    /// Region applies to every Region not named. Other lines are ignored.
    pub fn parse(text: &str) -> Result<Certificates, CertificateError> {
        let mut certificates = Certificates {
            by_region: HashMap::new(),
            default: None,
        };
        let mut region: Option<String> = None;
        let mut lines = text.lines().enumerate();
        while let Some((index, line)) = lines.next() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("region:") {
                region = Some(name.trim().to_string());
            } else if line == "-----BEGIN CERTIFICATE-----" {
                let body: Vec<&str> = lines
                    .by_ref()
                    .map(|(_, line)| line.trim())
                    .take_while(|line| *line != "-----END CERTIFICATE-----")
                    .collect();
                let key = public_key(&body.concat(), index + 1)?;
                match region.take() {
                    Some(name) => certificates.by_region.insert(name, key),
                    None => certificates.default.replace(key),
                };
            }
        }
        if certificates.by_region.is_empty() && certificates.default.is_none() {
            return Err(CertificateError::Empty);
        }
        Ok(certificates)
    }

    fn key_for(&self, region: &str) -> Option<&RsaPublicKey> {
        self.by_region.get(region).or(self.default.as_ref())
    }
}

/// The RSA public key of one base64 DER certificate that starts at `line`.
fn public_key(base64_der: &str, line: usize) -> Result<RsaPublicKey, CertificateError> {
    if base64_der.is_empty() {
        return Err(CertificateError::Unterminated { line });
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64_der)
        .map_err(|source| CertificateError::Base64 { line, source })?;
    let certificate = x509_cert::Certificate::from_der(&der)
        .map_err(|source| CertificateError::X509 { line, source })?;
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|source| CertificateError::X509 { line, source })?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|source| CertificateError::NotRsa { line, source })
}

/// Checks `identity` (None: the agent sent none) against the certificates and `policy`;
/// returns the document it vouches for. Whether the instance registered before is the caller's
/// check.
pub fn verify(
    certificates: &Certificates,
    policy: &IdentityPolicy,
    identity: Option<&InstanceIdentity>,
) -> Result<IdentityDocument, IdentityError> {
    let identity = identity.ok_or(IdentityError::Missing)?;
    let document: IdentityDocument = serde_json::from_str(&identity.document)
        .map_err(|error| IdentityError::Document(error.to_string()))?;
    let key = certificates
        .key_for(&document.region)
        .ok_or_else(|| IdentityError::UnknownRegion(document.region.clone()))?;
    let signature: String = identity.signature.split_whitespace().collect();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| IdentityError::SignatureEncoding)?;
    let digest = Sha256::digest(identity.document.as_bytes());
    key.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
        .map_err(|_| IdentityError::BadSignature(document.region.clone()))?;
    if document.instance_id.is_empty() {
        return Err(IdentityError::Document("it names no instanceId".into()));
    }
    if !policy.allowed_accounts.contains(&document.account_id) {
        return Err(IdentityError::AccountNotAllowed(document.account_id));
    }
    if !policy.allowed_regions.is_empty() && !policy.allowed_regions.contains(&document.region) {
        return Err(IdentityError::RegionNotAllowed(document.region));
    }
    Ok(document)
}

/// Why an agent type's identity rule cannot be used, if it cannot.
pub(crate) fn check_policy(policy: &IdentityPolicy) -> Option<String> {
    let lists = !policy.allowed_accounts.is_empty() || !policy.allowed_regions.is_empty();
    if !policy.require_instance_identity {
        return lists.then(|| {
            "allowed accounts and Regions apply only with require_instance_identity".to_string()
        });
    }
    if policy.allowed_accounts.is_empty() {
        return Some(
            "require_instance_identity needs at least one allowed account id (any AWS account can get a signed document)"
                .to_string(),
        );
    }
    let bad_account = policy
        .allowed_accounts
        .iter()
        .find(|id| id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()));
    bad_account.map(|id| format!("'{id}' is not an AWS account id (12 digits)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_certificates_cover_the_commercial_regions() {
        let certificates = Certificates::aws();
        for region in [
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
            "eu-west-1",
            "eu-central-1",
            "ap-northeast-1",
            "ap-southeast-2",
            "sa-east-1",
            "ca-central-1",
            "af-south-1",
            "me-south-1",
        ] {
            assert!(certificates.by_region.contains_key(region), "{region}");
        }
        assert!(certificates.default.is_none());
        assert!(certificates.key_for("xx-nowhere-1").is_none());
    }

    #[test]
    fn policies_name_what_is_wrong() {
        let policy = |require, accounts: &[&str], regions: &[&str]| IdentityPolicy {
            require_instance_identity: require,
            allowed_accounts: accounts.iter().map(|a| a.to_string()).collect(),
            allowed_regions: regions.iter().map(|r| r.to_string()).collect(),
            single_job_only: None,
        };
        assert_eq!(check_policy(&policy(false, &[], &[])), None);
        assert_eq!(check_policy(&policy(true, &["123456789012"], &[])), None);
        assert!(check_policy(&policy(true, &[], &["us-east-1"])).is_some());
        assert!(check_policy(&policy(true, &["12345"], &[])).is_some());
        assert!(check_policy(&policy(false, &["123456789012"], &[])).is_some());
    }

    #[test]
    fn garbage_is_not_a_certificate_file() {
        assert!(matches!(
            Certificates::parse("nothing here"),
            Err(CertificateError::Empty)
        ));
        assert!(matches!(
            Certificates::parse("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(CertificateError::Base64 { line: 1, .. })
        ));
    }

    #[test]
    fn a_missing_identity_is_refused_before_anything_else() {
        let refused = verify(Certificates::aws(), &IdentityPolicy::default(), None);
        assert_eq!(refused, Err(IdentityError::Missing));
        let identity = InstanceIdentity {
            document: r#"{"instanceId":"i-1","accountId":"123456789012","region":"us-east-1"}"#
                .into(),
            signature: "AAAA".into(),
        };
        let refused = verify(
            Certificates::aws(),
            &IdentityPolicy::default(),
            Some(&identity),
        );
        assert_eq!(
            refused,
            Err(IdentityError::BadSignature("us-east-1".into()))
        );
    }
}
