//go:build tools

// echo-basic, the suite's backend, is built from this module's graph (run.sh).
package conformance

import _ "sigs.k8s.io/gateway-api/conformance/echo-basic"
