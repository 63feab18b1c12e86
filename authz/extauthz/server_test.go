package extauthz_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keygate/keygate/authz/extauthz"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/sidecar"
)

const testOrg = "0f3b8f0e-1111-4c6e-9a53-000000000002"

func check(secret, target string) *authv3.CheckRequest {
	h := map[string]string{":method": "GET", ":path": target, ":authority": "api.example.com", "user-agent": "bench/1",
		"x-request-id": "2c8f9b1e-4f0a", "x-forwarded-proto": "https", "accept": "*/*"}
	if secret != "" {
		h["authorization"] = "Bearer " + secret
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "203.0.113.7", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: target, Headers: h}},
	}}
}

// TestCheckDecidesLikeTheDataPath: the same request gets the same answer
// from the gRPC front as from the data path, and changes the usage the
// same way.
func TestCheckDecidesLikeTheDataPath(t *testing.T) {
	e := sidecartest.New(t, sidecar.Options{})
	secret := e.SetupOrg(t, 1, 2, nil, testOrg)
	s := extauthz.New(extauthz.Options{Gate: e.Gate})
	ctx := context.Background()
	for i, want := range []int{200, 200, 429} {
		resp, err := s.Check(ctx, check(secret, "/v1/things"))
		if err != nil {
			t.Fatal(err)
		}
		got := 200
		if d := resp.GetDeniedResponse(); d != nil {
			got = int(d.GetStatus().GetCode())
		}
		if got != want {
			t.Errorf("check %d: %d, want %d: %v", i, got, want, resp)
		}
	}
	if got := sidecartest.Get(e.Data, secret); got != 429 {
		t.Errorf("data path after the quota: %d", got)
	}
	if u := e.Snapshot(t, time.Now()).Usage[testOrg]; u.Org != 2 {
		t.Errorf("usage %+v after two admitted checks", u)
	}
}

// TestCheckHostile: malformed checks are 4xx denials in the data path's
// body, change nothing and never fail the RPC.
func TestCheckHostile(t *testing.T) {
	e := sidecartest.New(t, sidecar.Options{})
	secret := e.SetupOrg(t, 1, 100, nil, testOrg)
	s := extauthz.New(extauthz.Options{Gate: e.Gate, RejectNonCanonical: true})
	// withHeader is a check carrying secret plus one hostile header.
	withHeader := func(name, value string) *authv3.CheckRequest {
		cr := check(secret, "/v1/things")
		cr.Attributes.Request.Http.Headers[name] = value
		return cr
	}
	many := check(secret, "/v1/things")
	for i := range extauthz.MaxHeaders {
		many.Attributes.Request.Http.Headers[fmt.Sprintf("x-h%d", i)] = "v"
	}
	badMethod := check(secret, "/v1/things")
	badMethod.Attributes.Request.Http.Method = "GE T"
	before := e.Snapshot(t, time.Now())
	for _, cr := range []*authv3.CheckRequest{
		nil, {}, {Attributes: &authv3.AttributeContext{}},
		check(secret, "/a/../b"), check(secret, "*"), check(secret, "/a%00"), check(secret, ""),
		check(secret, "/"+strings.Repeat("a", extauthz.MaxHeaderBytes)),
		// A valid key with a header the data path would not take: refused
		// before the decision, so nothing is charged.
		withHeader("Authorization", "Bearer other"), withHeader("x a", "v"), withHeader("x-a", "v\r\nx-b: w"),
		withHeader("x-a", strings.Repeat("v", extauthz.MaxHeaderBytes)), many, badMethod,
	} {
		resp, err := s.Check(context.Background(), cr)
		if err != nil {
			t.Fatalf("RPC failed: %v", err)
		}
		d := resp.GetDeniedResponse()
		if d == nil || d.GetStatus().GetCode() < 400 || d.GetStatus().GetCode() > 499 || !strings.HasPrefix(d.GetBody(), `{"error":true,"statusCode":4`) ||
			codes.Code(resp.GetStatus().GetCode()) == codes.OK {
			t.Errorf("%v: %v", cr, resp)
		}
	}
	if after := e.Snapshot(t, time.Now()); after.Usage[testOrg] != before.Usage[testOrg] {
		t.Errorf("usage changed: %+v → %+v", before.Usage[testOrg], after.Usage[testOrg])
	}
}

// BenchmarkCheck measures a decision through the gRPC front on a cache hit
// with the in-memory counter: in-process (the front's own cost on top of
// the decision), and through a real gRPC client over loopback (what Envoy
// pays, transport included).
func BenchmarkCheck(b *testing.B) {
	e := sidecartest.New(b, sidecar.Options{Metrics: metrics.NewMetrics(prometheus.NewRegistry(), 1000)})
	secret := e.SetupOrg(b, 1, 1<<62, nil, testOrg)
	s := extauthz.New(extauthz.Options{Gate: e.Gate, Metrics: metrics.NewMetrics(prometheus.NewRegistry(), 1000)})
	cr := check(secret, "/v1/things?page=2")
	ctx := context.Background()
	if resp, err := s.Check(ctx, cr); err != nil || resp.GetOkResponse() == nil { // warm the auth cache
		b.Fatalf("%v %v", resp, err)
	}
	b.Run("in-process", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Check(ctx, cr); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("grpc-loopback", func(b *testing.B) {
		srv, _ := extauthz.NewGRPCServer(s)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Stop()
		conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := authv3.NewAuthorizationClient(conn)
		b.ReportAllocs()
		for b.Loop() {
			resp, err := c.Check(ctx, cr)
			if err != nil || resp.GetOkResponse() == nil {
				b.Fatalf("%v %v", resp, err)
			}
		}
	})
}

// FuzzCheck: whatever bytes arrive as a CheckRequest (the gRPC server
// decodes them with the same protobuf code), Check never panics nor fails
// the RPC, refuses with a 4xx in the data path's body unless it admits, and
// admits only a request carrying the org's key.
func FuzzCheck(f *testing.F) {
	e := sidecartest.New(f, sidecar.Options{})
	secret := e.SetupOrg(f, 1, 1<<40, nil, testOrg)
	s := extauthz.New(extauthz.Options{Gate: e.Gate})
	for _, cr := range []*authv3.CheckRequest{
		check(secret, "/v1/things?page=2"), check("", "/"), check("kg_unknown", "/a/../b"), check(secret, "/a%2Fb"),
		{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "POST", Path: "/x", HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-api-key", RawValue: []byte(secret)}}},
		}}}},
	} {
		b, err := proto.Marshal(cr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var cr authv3.CheckRequest
		if proto.Unmarshal(data, &cr) != nil {
			return
		}
		resp, err := s.Check(context.Background(), &cr)
		if err != nil {
			t.Fatalf("RPC failed: %v", err)
		}
		if ok := resp.GetOkResponse(); ok != nil {
			if !strings.Contains(data2str(&cr), secret) || len(ok.GetHeaders()) != 4 {
				t.Fatalf("admitted %v: %v", &cr, resp)
			}
			return
		}
		d := resp.GetDeniedResponse()
		if d == nil || d.GetStatus().GetCode() < 400 || d.GetStatus().GetCode() > 499 && d.GetStatus().GetCode() != 503 {
			t.Fatalf("%v: %v", &cr, resp)
		}
	})
}

// data2str is every header value of a check, for "did it carry the key".
func data2str(cr *authv3.CheckRequest) string {
	var b strings.Builder
	hr := cr.GetAttributes().GetRequest().GetHttp()
	for _, v := range hr.GetHeaders() {
		b.WriteString(v + "\n")
	}
	for _, h := range hr.GetHeaderMap().GetHeaders() {
		b.WriteString(h.GetValue() + string(h.GetRawValue()) + "\n")
	}
	return b.String()
}

// TestGRPCBounds: a check larger than MaxMessageBytes is refused by the
// transport (RESOURCE_EXHAUSTED) without reaching the decision, and the
// connection goes on serving checks and health.
func TestGRPCBounds(t *testing.T) {
	e := sidecartest.New(t, sidecar.Options{})
	secret := e.SetupOrg(t, 1, 100, nil, testOrg)
	srv, _ := extauthz.NewGRPCServer(extauthz.New(extauthz.Options{Gate: e.Gate}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := authv3.NewAuthorizationClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := check(secret, "/v1/things")
	big.Attributes.Request.Http.Body = strings.Repeat("x", extauthz.MaxMessageBytes)
	if _, err := c.Check(ctx, big); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized check: %v", err)
	}
	if resp, err := c.Check(ctx, check(secret, "/v1/things")); err != nil || resp.GetOkResponse() == nil {
		t.Errorf("check after the oversized one: %v %v", resp, err)
	}
	if hs, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hs.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v %v", hs, err)
	}
	if u := e.Snapshot(t, time.Now()).Usage[testOrg]; u.Org != 1 {
		t.Errorf("usage %d, want the one admitted check", u.Org)
	}
}
