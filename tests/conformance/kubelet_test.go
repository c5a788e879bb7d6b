package conformance

// The test kubelet's pods/log, as the suite's mirror tests read it (DumpEchoLogs: the
// container's lines since a time, through the API server's proxy to the kubelet port).

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
)

func TestKubeletPodLogs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg, err := config.GetConfig()
	require.NoError(t, err)
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)

	ns := "portico-kubelet-logs"
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "echo",
			Image: "registry.k8s.io/gateway-api/echo-basic:v1.6.3",
			Env: []corev1.EnvVar{
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(3000)}}},
		}}},
	}
	_, err = cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(t, err)
	var podIP string
	for podIP == "" {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "echo", metav1.GetOptions{})
		require.NoError(t, err)
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				podIP = p.Status.PodIP
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod not ready: %+v", p.Status)
		case <-time.After(200 * time.Millisecond):
		}
	}

	logs := func(opts corev1.PodLogOptions) (string, error) {
		stream, err := cs.CoreV1().Pods(ns).GetLogs("echo", &opts).Stream(ctx)
		if err != nil {
			return "", err
		}
		defer stream.Close()
		b, err := io.ReadAll(stream)
		return string(b), err
	}
	get := func(path string) {
		resp, err := http.Get(fmt.Sprintf("http://%s:3000%s", podIP, path))
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	eventually := func(what string, ok func() bool) {
		for !ok() {
			select {
			case <-ctx.Done():
				t.Fatalf("never: %s", what)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}

	get("/first")
	eventually("/first is in the log", func() bool {
		all, err := logs(corev1.PodLogOptions{Container: "echo"})
		return err == nil && strings.Contains(all, "request made to /first ")
	})
	// sinceTime has a resolution of seconds: start at the next whole second.
	since := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(since) + 50*time.Millisecond)
	get("/second")
	eventually("/second is in the log", func() bool {
		all, err := logs(corev1.PodLogOptions{Container: "echo"})
		return err == nil && strings.Contains(all, "request made to /second ")
	})

	all, err := logs(corev1.PodLogOptions{Container: "echo"})
	require.NoError(t, err)
	require.Contains(t, all, "Starting server, listening on port 3000 (http)\n", "the container's stdout, without timestamps")
	require.Contains(t, all, "request made to /first ")

	recent, err := logs(corev1.PodLogOptions{Container: "echo", SinceTime: &metav1.Time{Time: since}})
	require.NoError(t, err)
	require.Contains(t, recent, "request made to /second ")
	require.NotContains(t, recent, "/first", "lines from before sinceTime")

	stamped, err := logs(corev1.PodLogOptions{Container: "echo", Timestamps: true, TailLines: ptrTo(int64(1))})
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(stamped, "\n"), "\n")
	require.Len(t, lines, 1, "tailLines=1: %q", stamped)
	stamp, rest, _ := strings.Cut(lines[0], " ")
	at, err := time.Parse(time.RFC3339Nano, stamp)
	require.NoError(t, err, "timestamps=true: %q", lines[0])
	require.False(t, at.Before(since), "the last line is the request after %s: %q", since, lines[0])
	require.Contains(t, rest, "request made to /second ")

	head, err := logs(corev1.PodLogOptions{Container: "echo", LimitBytes: ptrTo(int64(8))})
	require.NoError(t, err)
	require.Equal(t, "Starting", head, "limitBytes=8")

	_, err = logs(corev1.PodLogOptions{Container: "nonesuch"})
	require.Error(t, err, "a container the pod does not have")
	_, err = logs(corev1.PodLogOptions{Container: "echo", Previous: true})
	require.Error(t, err, "no terminated instance yet")

	// follow=true with tailLines=0: nothing of the past, then what the container writes.
	stream, err := cs.CoreV1().Pods(ns).GetLogs("echo", &corev1.PodLogOptions{Container: "echo", Follow: true, TailLines: ptrTo(int64(0))}).Stream(ctx)
	require.NoError(t, err)
	defer stream.Close()
	got := make(chan string, 1)
	go func() {
		var b strings.Builder
		buf := make([]byte, 4096)
		for !strings.Contains(b.String(), "/third ") {
			n, err := stream.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- b.String()
	}()
	for followed := ""; followed == ""; {
		get("/third")
		select {
		case followed = <-got:
			require.Contains(t, followed, "request made to /third ")
			require.NotContains(t, followed, "/second", "tailLines=0 shows nothing of the past")
		case <-time.After(time.Second):
		case <-ctx.Done():
			t.Fatal("follow never showed /third")
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
