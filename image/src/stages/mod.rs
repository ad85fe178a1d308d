//! The build's stages, in the order a build runs them. Each takes its inputs as arguments and
//! writes under a temporary name, renamed on success, so an interrupted build resumes.

pub mod agent;
pub mod bootstrap;
pub mod customise;
pub mod finish;
pub mod iso;
pub mod pxe;
pub mod sdcard;
pub mod squashfs;
pub mod verify;
