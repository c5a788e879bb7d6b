//go:build tools

// Package tools pins h2spec (the HTTP/2 conformance tester) as a Go module dependency, so
// tests/tools/h2spec.sh builds it from the Go module proxy at the version in go.mod.
package tools

import _ "github.com/summerwind/h2spec/cmd/h2spec"
