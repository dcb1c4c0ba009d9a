//! What the proxy tells the outside world: health, metrics, its mode and configuration.

pub mod health;
pub mod http;
pub mod metrics;
pub mod service_health;
