//! Service records as they arrive from the network: DNS-SD TXT pairs of a doorbell (raw bytes,
//! maybe not UTF-8) and JSON lists fetched from a member. Neither parser may panic, and whatever either
//! accepts must pass validation and survive a round trip unchanged.
#![no_main]

use cloudy_model::record::{parse_list, Doorbell, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        // TXT: pairs split on 0x00, key and value on the first '='; first two bytes the port.
        if rest.len() < 2 {
            return;
        }
        let port = u16::from_be_bytes([rest[0], rest[1]]);
        let owned: Vec<(String, Option<Vec<u8>>)> = rest[2..]
            .split(|&b| b == 0)
            .map(|p| match p.iter().position(|&b| b == b'=') {
                Some(i) => (
                    String::from_utf8_lossy(&p[..i]).into_owned(),
                    Some(p[i + 1..].to_vec()),
                ),
                None => (String::from_utf8_lossy(p).into_owned(), None),
            })
            .collect();
        let pairs: Vec<(&str, Option<&[u8]>)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        if let Ok((r, seals)) = Doorbell::from_txt(&pairs, port) {
            r.validate().expect("accepted doorbells are valid");
            let txt: Vec<(String, String)> = r.to_txt(&seals);
            let back: Vec<(&str, Option<&[u8]>)> = txt
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                .collect();
            let (again, seals_again) = Doorbell::from_txt(&back, port).expect("round trip");
            assert_eq!((again, seals_again), (r, seals));
        }
    } else {
        if let Ok(r) = Record::parse_json(rest) {
            assert_eq!(
                Record::parse_json(r.canonical().as_bytes()).expect("round trip"),
                r
            );
        }
        let _ = parse_list(rest, "0123456789abcdef0123456789abcdef");
    }
});
