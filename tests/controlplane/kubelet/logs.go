package main

// The kubelet's port (198.19.0.1:10250, HTTPS) for `kubectl logs`: the API server proxies
// `pods/log` to GET /containerLogs/{namespace}/{pod}/{container}. Only the API server may
// call it: the port asks for a client certificate from the test control plane's CA with the
// name the control plane gives the API server's kubelet client.
//
// Each container's output is a file of lines "<RFC 3339 nano UTC> <line>" (launch writes
// them); a restart moves the file to <container>.previous.log first, as a kubelet keeps the
// log of the last terminated instance. The query is the PodLogOptions the API server passes
// through: sinceTime, sinceSeconds, timestamps, tailLines, limitBytes, previous, follow.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	kubeletPort = 10250
	// The Subject CN of the API server's client certificate (tests/controlplane writes it).
	apiServerClientName = "kube-apiserver-kubelet-client"
	followPoll          = 200 * time.Millisecond
)

// serveKubeletPort listens until ctx ends.
func (k *kubelet) serveKubeletPort(ctx context.Context, certFile, keyFile, clientCAFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(clientCAFile)
	if err != nil {
		return fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("client CA %s: no certificate", clientCAFile)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(nodeIP.String(), strconv.Itoa(kubeletPort)))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	srv := &http.Server{
		Handler:           onlyAPIServer(mux),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("kubelet: port %d: %v", kubeletPort, err)
		}
	}()
	return nil
}

func onlyAPIServer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != apiServerClientName {
			http.Error(w, "forbidden: only the API server's kubelet client may call this port", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// logQuery is what the API server passes on of a PodLogOptions.
type logQuery struct {
	since      time.Time // zero: from the start
	timestamps bool
	tail       int64 // < 0: every line
	limit      int64 // <= 0: no limit
	previous   bool
	follow     bool
}

func parseLogQuery(q map[string][]string) (logQuery, error) {
	get := func(name string) string {
		if v := q[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	boolean := func(name string) (bool, error) {
		v := get(name)
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("%s: %q is not a boolean", name, v)
		}
		return b, nil
	}
	integer := func(name string, def int64) (int64, error) {
		v := get(name)
		if v == "" {
			return def, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s: %q is not a non-negative integer", name, v)
		}
		return n, nil
	}
	var lq logQuery
	var err error
	if v := get("sinceTime"); v != "" {
		if lq.since, err = time.Parse(time.RFC3339, v); err != nil {
			return lq, fmt.Errorf("sinceTime: %q is not RFC 3339", v)
		}
	}
	if v := get("sinceSeconds"); v != "" {
		if !lq.since.IsZero() {
			return lq, fmt.Errorf("sinceTime and sinceSeconds are exclusive")
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return lq, fmt.Errorf("sinceSeconds: %q is not a positive integer", v)
		}
		lq.since = time.Now().Add(-time.Duration(n) * time.Second)
	}
	if lq.timestamps, err = boolean("timestamps"); err != nil {
		return lq, err
	}
	if lq.previous, err = boolean("previous"); err != nil {
		return lq, err
	}
	if lq.follow, err = boolean("follow"); err != nil {
		return lq, err
	}
	if lq.tail, err = integer("tailLines", -1); err != nil {
		return lq, err
	}
	if lq.limit, err = integer("limitBytes", 0); err != nil {
		return lq, err
	}
	return lq, nil
}

func (k *kubelet) containerLogs(w http.ResponseWriter, req *http.Request) {
	ns, name, container := req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("container")
	lq, err := parseLogQuery(req.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var run *podRun
	k.mu.Lock()
	for _, r := range k.pods {
		if r.namespace == ns && r.name == name {
			run = r
		}
	}
	k.mu.Unlock()
	if run == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on this node", ns, name), http.StatusNotFound)
		return
	}
	known := false
	run.mu.Lock()
	for _, c := range run.containers {
		known = known || c.spec.Name == container
	}
	run.mu.Unlock()
	if !known {
		http.Error(w, fmt.Sprintf("container %q is not in pod %s/%s", container, ns, name), http.StatusNotFound)
		return
	}
	file := run.logFile(container)
	if lq.previous {
		file = run.previousLogFile(container)
		lq.follow = false // a terminated container's log does not grow
	}
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) && lq.previous {
		http.Error(w, fmt.Sprintf("previous terminated container %q in pod %s/%s not found", container, ns, name), http.StatusBadRequest)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	out := &limitedWriter{w: w, limited: lq.limit > 0, left: lq.limit}
	offset, err := writeLog(f, lq, out)
	if err != nil || !lq.follow || out.full() {
		return
	}
	follow(req.Context(), run, file, offset, lq, out)
}

// writeLog writes the lines of f the query selects and returns the offset it read to (the
// end of the last complete line).
func writeLog(f *os.File, lq logQuery, out *limitedWriter) (int64, error) {
	var lines [][]byte
	var offset int64
	s := bufio.NewReader(f)
	for {
		line, err := s.ReadBytes('\n')
		if err != nil {
			break // io.EOF, or a line still being written: follow picks it up
		}
		offset += int64(len(line))
		if selected(line, lq.since) {
			lines = append(lines, line)
			if lq.tail >= 0 && int64(len(lines)) > lq.tail {
				lines = lines[1:]
			}
		}
	}
	for _, line := range lines {
		if out.full() {
			break
		}
		if err := out.line(line, lq.timestamps); err != nil {
			return offset, err
		}
	}
	return offset, nil
}

// follow streams what the container writes from offset on, until the client goes away or
// the pod stops.
func follow(ctx context.Context, run *podRun, file string, offset int64, lq logQuery, out *limitedWriter) {
	flusher, _ := out.w.(http.Flusher)
	var partial []byte
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-ctx.Done():
			return
		case <-run.done:
			return
		case <-time.After(followPoll):
		}
		f, err := os.Open(file)
		if err != nil {
			return
		}
		if st, err := f.Stat(); err == nil && st.Size() < offset {
			offset = 0 // the container restarted: its new log begins
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return
		}
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			return
		}
		offset += int64(len(data))
		partial = append(partial, data...)
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			line := partial[:i+1]
			partial = partial[i+1:]
			if selected(line, lq.since) {
				if err := out.line(line, lq.timestamps); err != nil || out.full() {
					return
				}
			}
		}
	}
}

// selected says whether a log line was written at or after since.
func selected(line []byte, since time.Time) bool {
	if since.IsZero() {
		return true
	}
	stamp, _, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, string(stamp))
	return err == nil && !t.Before(since)
}

// limitedWriter writes log lines, with or without their timestamp, up to limitBytes.
type limitedWriter struct {
	w       io.Writer
	limited bool
	left    int64
	cut     bool
}

func (l *limitedWriter) full() bool { return l.cut }

func (l *limitedWriter) line(line []byte, timestamps bool) error {
	if !timestamps {
		if _, rest, ok := bytes.Cut(line, []byte{' '}); ok {
			line = rest
		}
	}
	if l.limited {
		if int64(len(line)) >= l.left {
			line = line[:l.left]
			l.cut = true
		}
		l.left -= int64(len(line))
	}
	if len(line) == 0 {
		return nil
	}
	_, err := l.w.Write(line)
	return err
}

func (r *podRun) logFile(container string) string {
	return filepath.Join(r.dir, "logs", container+".log")
}

func (r *podRun) previousLogFile(container string) string {
	return filepath.Join(r.dir, "logs", container+".previous.log")
}

// rotateLog keeps the log of a container's terminated instance as its previous log.
func (r *podRun) rotateLog(container string) {
	if err := os.Rename(r.logFile(container), r.previousLogFile(container)); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Printf("kubelet: %s/%s: keep previous log of %s: %v", r.namespace, r.name, container, strings.TrimSpace(err.Error()))
	}
}
