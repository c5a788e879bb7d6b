// The Gateway API conformance suite against Portico, installed the way a user installs it.
// run.sh starts the control plane and the test kubelet and runs this with KUBECONFIG set;
// the test installs the Gateway API CRDs and the chart, waits for the GatewayClass, then
// runs the suite for the profiles asked for, with the features the GatewayClass's
// status.supportedFeatures claims.
package conformance

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
)

var (
	crdDir   = flag.String("portico.crds", "", "directory of the Gateway API CRDs to install")
	helm     = flag.String("portico.helm", "", "the helm binary")
	chart    = flag.String("portico.chart", "", "Portico's chart")
	helmSets = flag.String("portico.helm-set", "", "comma-separated --set values for the chart")
	version  = flag.String("portico.version", "dev", "the version the report names")
	beside   = flag.String("portico.gateway-namespaces", "", "comma-separated namespaces of the suite whose Gateways get their dataplanes beside them (dataplane.gatewayNamespaces)")
)

func TestConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	installCRDs(t, ctx, opts.Client, *crdDir)
	besideNamespaces := split(*beside)
	createSuiteNamespaces(t, ctx, opts.Client, besideNamespaces)
	install(t, besideNamespaces)
	waitAccepted(t, ctx, opts.Client, opts.GatewayClassName)
	opts.Implementation = confv1.Implementation{
		Organization: "portico",
		Project:      "portico",
		URL:          "https://github.com/portico-gateway/portico",
		Version:      *version,
		Contact:      []string{"@portico-gateway/maintainers"},
	}
	conformance.RunConformanceWithOptions(t, opts)
}

// installCRDs applies every CRD in dir (server-side, as `kubectl apply --server-side`).
func installCRDs(t *testing.T, ctx context.Context, c client.Client, dir string) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no CRDs in %s", dir)
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(string(data)), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := dec.Decode(&obj.Object); err != nil {
				break
			}
			if obj.GetKind() != "CustomResourceDefinition" {
				continue // the safe-upgrades ValidatingAdmissionPolicy and its binding
			}
			require.NoError(t, c.Patch(ctx, obj, client.Apply, client.FieldOwner("portico-conformance"), client.ForceOwnership), f)
			names = append(names, obj.GetName())
		}
	}
	// Established before anything uses them (the chart's GatewayClass).
	for _, name := range names {
		for {
			crd := &unstructured.Unstructured{}
			crd.SetAPIVersion("apiextensions.k8s.io/v1")
			crd.SetKind("CustomResourceDefinition")
			err := c.Get(ctx, client.ObjectKey{Name: name}, crd)
			established := false
			if err == nil {
				conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
				for _, cond := range conds {
					m, _ := cond.(map[string]any)
					established = established || (m["type"] == "Established" && m["status"] == "True")
				}
			}
			if established {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("CRD %s is not Established", name)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

func split(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// createSuiteNamespaces creates the suite's own namespaces named in names, from its base
// manifest (labels and all, as the suite would), before the chart that puts objects in them:
// the suite then finds them there and goes on.
func createSuiteNamespaces(t *testing.T, ctx context.Context, c client.Client, names []string) {
	data, err := conformance.Manifests.ReadFile("base/manifests.yaml")
	require.NoError(t, err)
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(string(data)), 4096)
	found := map[string]bool{}
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			break
		}
		if obj.GetKind() != "Namespace" || !slices.Contains(names, obj.GetName()) {
			continue
		}
		if err := c.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			require.NoError(t, err, "namespace %s", obj.GetName())
		}
		found[obj.GetName()] = true
	}
	for _, n := range names {
		require.True(t, found[n], "namespace %s is not one of the suite's", n)
	}
}

// install runs `helm install` of the chart, as a user does; the dataplanes of Gateways in
// the namespaces beside run next to them.
func install(t *testing.T, beside []string) {
	args := []string{"upgrade", "--install", "portico", *chart, "--namespace", "portico-system", "--create-namespace", "--wait", "--timeout", "5m"}
	for _, s := range split(*helmSets) {
		args = append(args, "--set", s)
	}
	if len(beside) > 0 {
		args = append(args, "--set", "dataplane.gatewayNamespaces={"+strings.Join(beside, ",")+"}")
	}
	cmd := exec.Command(*helm, args...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "helm %s: %s", strings.Join(args, " "), out)
}

func waitAccepted(t *testing.T, ctx context.Context, c client.Client, name string) {
	for {
		gc := &gatewayv1.GatewayClass{}
		err := c.Get(ctx, client.ObjectKey{Name: name}, gc)
		if err == nil {
			for _, cond := range gc.Status.Conditions {
				if cond.Type == string(gatewayv1.GatewayClassConditionStatusAccepted) && cond.Status == "True" && len(gc.Status.SupportedFeatures) > 0 {
					return
				}
			}
		} else if !apierrors.IsNotFound(err) {
			t.Logf("GatewayClass %s: %v", name, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GatewayClass %s is not Accepted with supportedFeatures: %+v", name, gc.Status)
		case <-time.After(time.Second):
		}
	}
}
