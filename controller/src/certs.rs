//! The snapshot channel's serving certificate, shared by every controller replica through a
//! Secret: the first replica to start creates it (self-signed), the others read it, so
//! dataplanes trust one certificate whichever replica they reach. A rotation is deleting the
//! Secret and restarting the controllers.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;

/// The certificate and key (PEM) in Secret `ns/name`, created when missing.
pub async fn load_or_create(
    client: &Client,
    ns: &str,
    name: &str,
    names: &[String],
) -> anyhow::Result<(String, String)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await? {
            let field = |k: &str| -> anyhow::Result<String> {
                let v = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .ok_or_else(|| anyhow::anyhow!("Secret {ns}/{name} has no {k}"))?;
                Ok(String::from_utf8(v.0.clone())?)
            };
            return Ok((field("tls.crt")?, field("tls.key")?));
        }
        let (cert, key) = crate::channel::self_signed(names)?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "portico-controller".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(cert.clone().into_bytes())),
                ("tls.key".to_string(), ByteString(key.clone().into_bytes())),
            ])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{ns}/{name}"), "created the snapshot channel's certificate");
                return Ok((cert, key));
            }
            // Another replica was first: read its certificate.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("cannot read or create Secret {ns}/{name}")
}
