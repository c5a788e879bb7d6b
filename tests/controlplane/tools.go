//go:build tools

// The Gateway API module is required only for its CRD manifests, which the test harness reads
// from the module cache (`go list -m -json sigs.k8s.io/gateway-api`). This import keeps the
// version pinned in go.mod without compiling it into the control plane.
package main

import _ "sigs.k8s.io/gateway-api/apis/v1"
