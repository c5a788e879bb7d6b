//! What the provisioner knows about its own installation. A leaf that both the reconcile loop
//! ([`super`]) and the objects it makes ([`super::objects`]) import, so that `objects` needs
//! nothing from the loop that imports it: the modules form no cycle.

/// What the provisioner needs to know about its own installation.
#[derive(Clone, Debug)]
pub struct ProvisionSettings {
    pub controller_name: String,
    /// The dataplane image, unless a GatewayConfig names another.
    pub image: String,
    /// `host:port` of the snapshot channel as dataplane pods reach it (the controller's
    /// Service).
    pub controller_address: String,
    /// The name in the controller's serving certificate.
    pub server_name: String,
    /// PEM of the CA the dataplanes trust for the controller, copied next to each dataplane.
    pub ca_pem: String,
    /// Where each Gateway's dataplane objects are made.
    pub placement: portico_compile::Placement,
    /// This replica's name, for Events.
    pub identity: String,
}
