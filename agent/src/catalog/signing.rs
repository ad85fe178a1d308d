//! The MAC on our mDNS doorbells. Anyone on the LAN can send mDNS, so only community key
//! holders may make a doorbell a browser acts on. Its own subkey of the community key keeps
//! this MAC from ever standing in for one of the exchange protocol's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::mesh::exchange::CommunityKey;
use cloudy_model::record::Doorbell;

type HmacSha256 = Hmac<Sha256>;

/// 128 bits: plenty for a tag checked online, and it keeps the TXT short.
const MAC_LEN: usize = 16;

/// The doorbell MAC's subkey follows the community key: after a rekey we sign under the new
/// key at once and still take doorbells under the old one for the overlap.
#[derive(Clone)]
pub struct MdnsKey(CommunityKey);

const LABEL: &[u8] = b"mdns doorbell v2";

impl MdnsKey {
    pub fn new(key: &CommunityKey) -> MdnsKey {
        MdnsKey(key.clone())
    }

    pub fn sign(&self, d: &Doorbell) -> String {
        let k = self.0.subkey(LABEL);
        crate::os::identity::hex(&hmac(&k, d).finalize().into_bytes()[..MAC_LEN])
    }

    /// Constant-time check of a MAC from the network.
    pub fn verify(&self, d: &Doorbell, mac_hex: &str) -> bool {
        match unhex(mac_hex) {
            Some(tag) if tag.len() == MAC_LEN => self
                .0
                .subkeys_accepted(LABEL)
                .iter()
                .any(|k| hmac(k, d).verify_truncated_left(&tag).is_ok()),
            _ => false,
        }
    }
}

fn hmac(key: &[u8; 32], d: &Doorbell) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("32-byte key");
    m.update(b"doorbell v2|");
    m.update(d.canonical().as_bytes());
    m
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;

    #[test]
    fn doorbell_macs_cover_every_part_and_need_the_key() {
        let k = MdnsKey::new(&CommunityKey::derive("c", "0123456789abcdef"));
        let d = Doorbell::of(&record('a', "serf", 1), "0123456789ab", 1_800_000_000);
        let mac = k.sign(&d);
        assert_eq!(mac.len(), 32);
        assert!(k.verify(&d, &mac));
        for change in [
            |d: &mut Doorbell| d.port = 2,
            |d: &mut Doorbell| d.ts += 1,
            |d: &mut Doorbell| d.rev = "0123456789ac".into(),
            |d: &mut Doorbell| d.ip = "10.213.0.9".parse().unwrap(),
        ] {
            let mut d2 = d.clone();
            change(&mut d2);
            assert!(!k.verify(&d2, &mac), "covers {d2:?}");
        }
        let other = MdnsKey::new(&CommunityKey::derive("c", "0123456789abcdeX"));
        assert!(!other.verify(&d, &mac));
        assert!(!k.verify(&d, &mac[..30]));
        assert!(!k.verify(&d, "zz"));
        assert!(!k.verify(&d, "é"));
    }
}
