// Command kubelet-streaming is the front of the test bed's local node's kubelet API.
//
// The local node (modelship_testbed.localnode, Python) runs pods as local processes and
// serves the kubelet's plain HTTP endpoints (container logs, /healthz) on 127.0.0.1. This
// program listens on the node's kubelet port instead, with TLS and client certificates
// signed by the test bed's CA (the API server presents one, --kubelet-client-certificate),
// and:
//
//   - serves /portForward/{namespace}/{pod}[/{uid}] with the kubelet's own port-forward
//     server, k8s.io/cri-streaming/pkg/streaming/portforward (SPDY/3.1, which the API
//     server speaks to a kubelet when it translates kubectl's WebSocket, and the v4
//     WebSocket channel protocol), dialling the pod's own loopback address;
//   - reverse-proxies every other path to the Python agent, streaming (logs -f).
//
// Why Go and not Python: SPDY/3.1 framing with its zlib header dictionary, flow control
// and stream pairing is what kubectl and the API server expect byte for byte; the kubelet's
// package does exactly what a kubelet does, and a stand-in would be a second, untested
// implementation of it. The cost is one small binary built from Go modules (about a
// minute cold, cached after).
//
// Which pods are on this node, and their addresses, come from the agent
// (GET {backend}/testbed/pods/{namespace}/{pod} -> {"uid": ..., "ip": ...} or 404), looked
// up again for every forwarded connection, so a deleted pod stops being reachable. An
// address outside 127.0.0.0/8 is refused: no packet may leave loopback here.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// The kubelet's defaults: --streaming-connection-idle-timeout and the stream creation timeout.
const (
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
	dialTimeout           = 10 * time.Second
)

var loopback = netip.MustParsePrefix("127.0.0.0/8")

type podInfo struct {
	UID string `json:"uid"`
	IP  string `json:"ip"`
}

// errNotHere: the pod is not (or no longer) run by this node.
var errNotHere = errors.New("pod does not exist")

type server struct {
	backend  *url.URL
	nodeName string
	client   *http.Client
}

// lookup asks the agent for a pod it runs.
func (s *server) lookup(ctx context.Context, ns, name string) (*podInfo, error) {
	u := s.backend.JoinPath("testbed", "pods", ns, name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the local node agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, errNotHere
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("the local node agent answered %s: %s", resp.Status, body)
	}
	var p podInfo
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		return nil, fmt.Errorf("the local node agent's answer: %w", err)
	}
	return &p, nil
}

// podAddr is the pod's address if it may be dialled: an IPv4 address in 127.0.0.0/8.
func podAddr(p *podInfo) (netip.Addr, error) {
	if p.IP == "" {
		return netip.Addr{}, errors.New("the pod has no address yet")
	}
	ip, err := netip.ParseAddr(p.IP)
	if err != nil || !loopback.Contains(ip) {
		return netip.Addr{}, fmt.Errorf("refusing to forward to pod address %q: outside 127.0.0.0/8", p.IP)
	}
	return ip, nil
}

func (s *server) portForward(w http.ResponseWriter, r *http.Request) {
	ns, name, uid := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("uid")
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p, err := s.lookup(r.Context(), ns, name)
	if errors.Is(err, errNotHere) {
		http.Error(w, fmt.Sprintf("pod does not exist: no pod %q in namespace %q runs on node %s", name, ns, s.nodeName),
			http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if uid != "" && uid != p.UID {
		http.Error(w, fmt.Sprintf("pod not found: pod %s/%s on node %s has uid %s, not %s", ns, name, s.nodeName, p.UID, uid),
			http.StatusNotFound)
		return
	}
	if _, err := podAddr(p); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	f := &forwarder{s: s, ns: ns, name: name, uid: p.UID}
	portforward.ServePortForward(w, r, f, name, uid, opts, idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// forwarder is one port-forward session's portforward.PortForwarder.
type forwarder struct {
	s             *server
	ns, name, uid string
}

// PortForward copies one forwarded connection to and from the pod's port, as the kubelet's
// container runtimes do: until either side ends, then a second for the other to finish.
func (f *forwarder) PortForward(ctx context.Context, _ string, _ string, port int32, stream io.ReadWriteCloser) error {
	p, err := f.s.lookup(ctx, f.ns, f.name)
	if err == nil && p.UID != f.uid {
		err = errNotHere
	}
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", f.ns, f.name, err)
	}
	ip, err := podAddr(p)
	if err != nil {
		return err
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("invalid port %d", port)
	}
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp4", net.JoinHostPort(ip.String(), strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	errs := make(chan error, 2)
	go func() { // client -> pod; at the client's end, half-close so the pod sees EOF
		_, err := io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		errs <- err
	}()
	go func() { // pod -> client
		_, err := io.Copy(stream, conn)
		errs <- err
	}()
	var first error
	select {
	case first = <-errs:
	case <-ctx.Done():
		first = ctx.Err()
	}
	select {
	case <-errs:
	case <-time.After(time.Second):
	}
	return first
}

func main() {
	listen := flag.String("listen", "127.0.0.1:10250", "address of the kubelet API (TLS)")
	cert := flag.String("tls-cert-file", "", "serving certificate")
	key := flag.String("tls-private-key-file", "", "its key")
	ca := flag.String("client-ca-file", "", "CA that signs accepted client certificates")
	backend := flag.String("backend", "http://127.0.0.1:10248", "the local node agent's plain HTTP API")
	nodeName := flag.String("node-name", "modelship-local", "the node's name, for messages")
	flag.Parse()

	be, err := url.Parse(*backend)
	if err != nil || be.Scheme != "http" {
		log.Fatalf("--backend %q: want an http:// URL", *backend)
	}
	if h := be.Hostname(); h != "127.0.0.1" && h != "localhost" {
		log.Fatalf("--backend %q: must be on 127.0.0.1", *backend)
	}
	pem, err := os.ReadFile(*ca)
	if err != nil {
		log.Fatalf("--client-ca-file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("--client-ca-file %s: no certificate in it", *ca)
	}
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("serving certificate: %v", err)
	}

	s := &server{backend: be, nodeName: *nodeName, client: &http.Client{Timeout: 10 * time.Second}}
	proxy := httputil.NewSingleHostReverseProxy(be)
	proxy.FlushInterval = -1 // stream at once: kubectl logs -f
	proxy.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		http.Error(w, "the local node agent did not answer: "+err.Error(), http.StatusBadGateway)
	}

	mux := http.NewServeMux()
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /portForward/{ns}/{pod}", s.portForward)
		mux.HandleFunc(m+" /portForward/{ns}/{pod}/{uid}", s.portForward)
	}
	mux.Handle("/", proxy)

	srv := &http.Server{
		Addr:    *listen,
		Handler: mux,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{pair},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(os.Stderr, "", log.LstdFlags),
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	done := make(chan struct{})
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx) // hijacked (port-forward) connections end with the process
		close(done)
	}()
	log.Printf("kubelet API on https://%s: portForward here, everything else from %s", *listen, be)
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("serve: %v", err)
	}
	<-done
}
