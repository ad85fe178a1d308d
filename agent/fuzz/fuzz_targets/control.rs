//! The control socket's requests as the agent reads them: any bytes (up to the socket's 16 KiB)
//! as one request line, through the parser and the typed checks the server runs before acting
//! (`Request::parse_line`), then the provider lookup a `join`/`select` does, against a small
//! fixed catalog. Touches no socket, file or process.
//!
//! Whatever is accepted must pass the checks and survive a round trip as the CLI would send
//! it; whatever is refused is an error reply that serialises.
#![no_main]

use cloudy_agent::control::{Reply, Request};
use cloudy_agent::probe::ratings::Ratings;
use cloudy_agent::probe::select;
use cloudy_agent::probe::Scores;
use cloudy_model::record::Record;
use libfuzzer_sys::fuzz_target;

const ME: &str = "0123456789abcdef0123456789abcdef";

fn catalog() -> Vec<Record> {
    [
        include_str!("../seeds/record/json-one"),
        r#"{"type": "syncthing", "description": "x", "node": "n2", "node_id": "fedcba9876543210fedcba9876543210", "host": "n2.local", "ip": "10.0.0.2", "port": 22000, "microcloud": "c", "fields": {"device_id": "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"}}"#,
    ]
    .iter()
    .filter_map(|j| Record::parse_json(j.as_bytes()).ok())
    .collect()
}

fuzz_target!(|data: &[u8]| {
    match Request::parse_line(data) {
        Ok(req) => {
            req.check().expect("an accepted request passes the checks");
            let line = serde_json::to_vec(&req).expect("requests serialise");
            assert_eq!(Request::parse_line(&line).ok().as_ref(), Some(&req));
            let records = catalog();
            let scores = Scores::default();
            let ratings = Ratings::default();
            match &req {
                Request::Join { kind, provider } => {
                    let _ =
                        select::lookup(kind, provider.as_deref(), &records, &scores, &ratings, ME);
                }
                Request::Select { kind } => {
                    let _ = select::choose(kind, &records, &scores, &ratings, ME);
                    let _ = select::rank(Some(kind), &records, &scores, &ratings, ME);
                }
                Request::Rate { .. }
                | Request::Scan { .. }
                | Request::State {}
                | Request::Invite { .. }
                | Request::Invitations {}
                | Request::Revoke { .. }
                | Request::Ui { .. }
                | Request::Community { .. }
                | Request::SetupName { .. }
                | Request::SetupCreate { .. }
                | Request::SetupJoin { .. }
                | Request::Pending {}
                | Request::Approve { .. }
                | Request::Rekey { .. } => {}
            }
        }
        Err(reply) => {
            assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
            serde_json::to_vec(&reply).expect("replies serialise");
        }
    }
});
