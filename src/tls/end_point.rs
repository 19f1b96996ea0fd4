//! RFC 5929 `tls-server-end-point`: the channel binding data of SCRAM-SHA-256-PLUS,
//! a hash of the server's certificate. The hash function is the one the certificate
//! is signed with, SHA-256 when that is MD5 or SHA-1. Certificates whose signature
//! names no single hash (RSASSA-PSS keeps it in parameters, Ed25519 has none) give
//! no data, and pgmux then offers no channel binding.

use sha2::Digest;

/// The end-point data of a DER certificate, or `None` when its signature algorithm
/// does not tell the hash (or the DER cannot be read).
pub fn end_point_data(cert: &[u8]) -> Option<Vec<u8>> {
    let certificate = Der(cert).element(0x30)?.0;
    let mut fields = Der(certificate);
    fields.element(0x30)?; // tbsCertificate
    let algorithm = fields.element(0x30)?.0;
    let oid = Der(algorithm).element(0x06)?.0;
    Some(match hash_of(oid)? {
        Hash::Sha224 => sha2::Sha224::digest(cert).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash an end point uses for a signature algorithm's OID (DER content bytes).
fn hash_of(oid: &[u8]) -> Option<Hash> {
    // 1.2.840.113549.1.1.x: PKCS #1 RSA signatures.
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4.x: ECDSA signatures.
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    if let Some(rest) = oid.strip_prefix(PKCS1) {
        return match rest {
            // md5, sha1 with RSA: SHA-256, as RFC 5929 says.
            [0x04] | [0x05] | [0x0b] => Some(Hash::Sha256),
            [0x0c] => Some(Hash::Sha384),
            [0x0d] => Some(Hash::Sha512),
            [0x0e] => Some(Hash::Sha224),
            _ => None,
        };
    }
    match oid.strip_prefix(ECDSA)? {
        // ecdsa-with-SHA1 (4.1), then ecdsa-with-SHA224..512 (4.3.1-4).
        [0x01] | [0x03, 0x02] => Some(Hash::Sha256),
        [0x03, 0x01] => Some(Hash::Sha224),
        [0x03, 0x03] => Some(Hash::Sha384),
        [0x03, 0x04] => Some(Hash::Sha512),
        _ => None,
    }
}

/// A cursor over DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The content of the next element, which must carry `tag`; the cursor moves on.
    fn element(&mut self, tag: u8) -> Option<Der<'a>> {
        let (&first, rest) = self.0.split_first()?;
        if first != tag {
            return None;
        }
        let (&len0, rest) = rest.split_first()?;
        let (len, rest) = if len0 < 0x80 {
            (usize::from(len0), rest)
        } else {
            let n = usize::from(len0 & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        self.0 = &rest[len..];
        Some(Der(&rest[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn hashes_with_the_signatures_hash() {
        let p256 = cert_der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            end_point_data(&p256),
            Some(sha2::Sha256::digest(&p256).to_vec())
        );
        let p384 = cert_der(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            end_point_data(&p384),
            Some(sha2::Sha384::digest(&p384).to_vec())
        );
    }

    #[test]
    fn no_data_without_a_single_hash_or_from_garbage() {
        assert_eq!(end_point_data(&cert_der(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_data(b""), None);
        assert_eq!(end_point_data(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let p256 = cert_der(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point_data(&p256[..p256.len() / 2]), None);
    }

    #[test]
    fn rsa_signature_oids() {
        let sha256_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        assert!(matches!(hash_of(&sha256_rsa), Some(Hash::Sha256)));
        let sha1_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        assert!(matches!(hash_of(&sha1_rsa), Some(Hash::Sha256)));
        let sha512_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
        assert!(matches!(hash_of(&sha512_rsa), Some(Hash::Sha512)));
        let pss = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
        assert!(hash_of(&pss).is_none());
    }
}
