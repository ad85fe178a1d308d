//! Our services as the catalog publishes them: the built-in and declared ones, then the managed
//! ones as the manager adopts them, each with its supervisor's status. A managed service is
//! published only while `Running` and healthy.

use std::sync::{Arc, Mutex};

use crate::catalog::publish::LocalRecords;
use crate::catalog::Record;
use crate::os::supervisor::{Shared, State};
use crate::services::builtin::healthy_records;
use crate::services::{Context, Service};

/// A service and, for a managed one, its supervisor's status.
pub type Published = (Arc<dyn Service>, Option<Shared>);

#[derive(Default)]
pub struct Local {
    services: Mutex<Vec<Published>>,
}

impl Local {
    pub fn new(services: Vec<Arc<dyn Service>>) -> Arc<Local> {
        Arc::new(Local {
            services: Mutex::new(services.into_iter().map(|s| (s, None)).collect()),
        })
    }

    pub fn add(&self, s: Arc<dyn Service>, status: Option<Shared>) {
        self.services.lock().unwrap().push((s, status));
    }
}

impl LocalRecords for Local {
    fn records(&self, origin: &Context) -> Vec<Record> {
        let list: Vec<Arc<dyn Service>> = self
            .services
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, st)| {
                st.as_ref()
                    .is_none_or(|st| st.lock().unwrap().state == State::Running)
            })
            .map(|(s, _)| s.clone())
            .collect();
        healthy_records(&list, origin)
    }
}
