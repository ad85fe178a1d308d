//! cloudy-image: from a recipe and a board definition to a verified Cloudy image.
//!
//! Stages, in order: [`bootstrap`] (cached rootfs), [`squashfs`] (cached base layer),
//! [`agent`] (cross-built, beside the bootstrap), [`customise`] (the Cloudy layer), [`iso`],
//! [`sdcard`] or [`pxe`], [`finish`], [`verify`].

pub mod agent;
pub mod binfmt;
pub mod bmap;
pub mod board;
pub mod bootstrap;
pub mod build;
pub mod cache;
pub mod cmd;
pub mod compress;
pub mod config;
pub mod customise;
pub mod finish;
pub mod http;
pub mod iso;
pub mod progress;
pub mod pxe;
pub mod qemu;
pub mod recipe;
pub mod sdcard;
pub mod seed_image;
pub mod squashfs;
pub mod tools;
pub mod verify;
