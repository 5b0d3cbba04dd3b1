//! The `whatsapp-router` binary: a thin shell around [`whatsapp_router::cli`].

fn main() -> std::process::ExitCode {
    whatsapp_router::cli::main()
}
