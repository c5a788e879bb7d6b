// Command controlplane runs a real Kubernetes control plane for Portico's tests, in one
// process: etcd (embedded from etcd's own module), kube-apiserver and kube-controller-manager
// (from the Kubernetes project's modules at the version pinned in go.mod). No kubelet and no
// scheduler: pods stay Pending, which most tests do not need; the conformance harness adds
// the test kubelet (./kubelet), and the certificates of its port are written here too.
//
// It writes certificates and an admin kubeconfig into -dir, prints
// "READY <server-url> <kubeconfig>" on stdout once the API server answers and the default
// namespace exists, and runs until SIGTERM/SIGINT or until its standard input closes (so a
// test process that dies never leaves a control plane behind).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	basecompatibility "k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// The controllers the tests rely on: owner references (GC), Deployments, EndpointSlices of
// Services, HPAs, ServiceAccounts and namespaces.
var controllers = []string{
	"garbage-collector-controller",
	"deployment-controller",
	"replicaset-controller",
	"endpointslice-controller",
	"horizontal-pod-autoscaler-controller",
	"serviceaccount-controller",
	"namespace-controller",
	"root-ca-certificate-publisher-controller",
}

func main() {
	dir := flag.String("dir", "", "directory for certificates, etcd data and the kubeconfig")
	verbose := flag.Bool("v", false, "let the components log at their default level")
	removeDir := flag.Bool("remove-dir", false, "delete -dir (etcd data, keys) on the way out")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "controlplane: -dir is required")
		os.Exit(2)
	}
	err := run(*dir, *verbose)
	if *removeDir {
		// The test harness keeps its control plane in a static that is never dropped, so the
		// directory is ours to remove: each run would otherwise leave ~125 MB of etcd data.
		_ = os.RemoveAll(*dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

func run(dir string, verbose bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// The parent holds our stdin open; EOF means it is gone.
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	// Two components configure logging in one process; the second must not fail on it.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged

	pki, err := writePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	etcdURL, err := startEtcd(ctx, filepath.Join(dir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	server, errCh, err := startAPIServer(ctx, pki, etcdURL, verbose)
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	kubeconfig := filepath.Join(dir, "admin.kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, pki); err != nil {
		return err
	}
	if err := waitReady(ctx, kubeconfig, errCh); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	kcmErr, err := startControllerManager(ctx, kubeconfig, pki, verbose)
	if err != nil {
		return fmt.Errorf("kube-controller-manager: %w", err)
	}
	fmt.Printf("READY %s %s\n", server, kubeconfig)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errCh:
		return fmt.Errorf("kube-apiserver stopped: %w", err)
	case err := <-kcmErr:
		return fmt.Errorf("kube-controller-manager stopped: %w", err)
	}
}

// pkiFiles are the paths of the generated key material.
type pkiFiles struct {
	caCert, caKey           string
	servingCert, servingKey string
	adminCert, adminKey     string
	serviceAccountKey       string
	// The API server's client certificate to the test kubelet's port, and that port's
	// serving certificate (the kubelet reads pki/kubelet.{crt,key}).
	kubeletClientCert, kubeletClientKey string
	kubeletCert, kubeletKey             string
}

func writePKI(dir string) (pkiFiles, error) {
	p := pkiFiles{
		caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servingKey: filepath.Join(dir, "apiserver.key"),
		adminCert: filepath.Join(dir, "admin.crt"), adminKey: filepath.Join(dir, "admin.key"),
		serviceAccountKey: filepath.Join(dir, "sa.key"),
		kubeletClientCert: filepath.Join(dir, "apiserver-kubelet-client.crt"), kubeletClientKey: filepath.Join(dir, "apiserver-kubelet-client.key"),
		kubeletCert: filepath.Join(dir, "kubelet.crt"), kubeletKey: filepath.Join(dir, "kubelet.key"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "portico-test-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	if err := writeCertKey(p.caCert, p.caKey, caDER, caKey); err != nil {
		return p, err
	}
	leaf := func(serial int64, subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, dns []string, certPath, keyPath string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      subject,
			NotBefore:    now,
			NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		return writeCertKey(certPath, keyPath, der, key)
	}
	if err := leaf(2, pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		// 10.96.0.1: the kubernetes Service, where the test kubelet's pods reach the API server.
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}, []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		p.servingCert, p.servingKey); err != nil {
		return p, err
	}
	if err := leaf(3, pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, x509.ExtKeyUsageClientAuth,
		nil, nil, p.adminCert, p.adminKey); err != nil {
		return p, err
	}
	if err := leaf(4, pkix.Name{CommonName: "kube-apiserver-kubelet-client"}, x509.ExtKeyUsageClientAuth,
		nil, nil, p.kubeletClientCert, p.kubeletClientKey); err != nil {
		return p, err
	}
	// 198.19.0.1: the test kubelet's node address (tests/controlplane/kubelet).
	if err := leaf(5, pkix.Name{CommonName: "portico-test-node"}, x509.ExtKeyUsageServerAuth,
		[]net.IP{net.ParseIP("198.19.0.1")}, nil, p.kubeletCert, p.kubeletKey); err != nil {
		return p, err
	}
	// One ECDSA key signs service-account tokens and verifies them.
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	return p, writeKey(p.serviceAccountKey, saKey)
}

func writeCertKey(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeKey(keyPath, key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func freeLocalURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return url.Parse("http://" + l.Addr().String())
}

// startEtcd embeds etcd as the API server's own storage tests do: no fsync, a private
// directory, loopback client and peer URLs.
func startEtcd(ctx context.Context, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	client, err := freeLocalURL()
	if err != nil {
		return "", err
	}
	peer, err := freeLocalURL()
	if err != nil {
		return "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "portico-test"
	cfg.Dir = dir
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return "", fmt.Errorf("not ready after 60s")
	}
	go func() {
		<-ctx.Done()
		e.Close()
	}()
	return client.String(), nil
}

func startAPIServer(ctx context.Context, pki pkiFiles, etcdURL string, verbose bool) (string, <-chan error, error) {
	s := apiserveroptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.caCert,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.serviceAccountKey,
		"--service-account-signing-key-file=" + pki.serviceAccountKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// pods/log goes to the test kubelet's port, mutually authenticated.
		"--kubelet-client-certificate=" + pki.kubeletClientCert,
		"--kubelet-client-key=" + pki.kubeletClientKey,
		"--kubelet-certificate-authority=" + pki.caCert,
		"--kubelet-preferred-address-types=InternalIP",
		// The kubernetes Service would get the loopback address, which Endpoints refuse.
		"--endpoint-reconciler-type=none",
	}
	if !verbose {
		args = append(args, "-v=0")
	}
	if err := fs.Parse(args); err != nil {
		return "", nil, err
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return "", nil, err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	completed, err := s.Complete(ctx)
	if err != nil {
		return "", nil, err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return "", nil, utilerrors.NewAggregate(errs)
	}
	errCh := make(chan error, 1)
	go func() {
		if err := apiserverapp.Run(ctx, completed); err != nil && ctx.Err() == nil {
			errCh <- err
		}
	}()
	return fmt.Sprintf("https://127.0.0.1:%d", s.SecureServing.BindPort), errCh, nil
}

func writeKubeconfig(path, server string, pki pkiFiles) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: pki.caCert}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: pki.adminCert, ClientKey: pki.adminKey}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "test"
	return clientcmd.WriteToFile(*cfg, path)
}

// waitReady polls /healthz and then waits for the default namespace, as the upstream test
// server does.
func waitReady(ctx context.Context, kubeconfig string, errCh <-chan error) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case err := <-errCh:
			return err
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		status := 0
		client.CoreV1().RESTClient().Get().AbsPath("/healthz").Do(ctx).StatusCode(&status)
		if status == 200 {
			_, err := client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
			if err == nil {
				return nil
			}
			if !apierrors.IsNotFound(err) && time.Now().After(deadline) {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not healthy after 2 minutes (last /healthz status %d)", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func startControllerManager(ctx context.Context, kubeconfig string, pki pkiFiles, verbose bool) (<-chan error, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	// Its own registry: the API server's already holds the kube component.
	registry := basecompatibility.NewComponentGlobalsRegistry()
	featureGate := utilfeature.DefaultMutableFeatureGate.DeepCopy()
	effectiveVersion := utilcompatibility.DefaultKubeEffectiveVersionForTest()
	effectiveVersion.SetEmulationVersion(featureGate.EmulationVersion())
	effectiveVersion.SetMinCompatibilityVersion(featureGate.MinCompatibilityVersion())
	if err := registry.Register(basecompatibility.DefaultKubeComponent, effectiveVersion, featureGate); err != nil {
		return nil, err
	}
	s.ComponentGlobalsRegistry = registry
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--root-ca-file=" + pki.caCert,
		"--service-account-private-key-file=" + pki.serviceAccountKey,
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
	}
	if !verbose {
		args = append(args, "-v=0")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s.ParsedFlags = &named
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	config, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, err
	}
	errCh := make(chan error, 1)
	go func() {
		if err := kcmapp.Run(ctx, config.Complete()); err != nil && ctx.Err() == nil {
			errCh <- err
		}
	}()
	return errCh, nil
}
