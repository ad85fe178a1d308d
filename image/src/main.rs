use clap::Parser;

use cloudy_image::commands::{self, Cli};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = commands::run(Cli::parse()) {
        eprintln!("\ncloudy-image: error: {}", commands::error_text(&e));
        std::process::exit(1);
    }
}
