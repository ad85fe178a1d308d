//! The node's operating system, as the agent sees it: paths under a root, one supervisor for
//! every child process, links and addresses (rtnetlink), the node's identity, secrets, file
//! helpers, one HTTP client, and where state is kept (a live node's data disk). Imports only
//! `cloudy-model`.

pub mod certificate;
pub mod files;
pub mod http;
pub mod identity;
pub mod issue;
pub mod network;
pub mod secrets;
pub mod stick;
pub mod storage;
pub mod stored;
pub mod supervisor;
pub mod system;
pub mod wifi;
