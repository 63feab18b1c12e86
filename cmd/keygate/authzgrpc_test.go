package main

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/internal/redistest"
)

// authzClient is a real gRPC client of a running keygate's
// KEYGATE_AUTHZ_GRPC_ADDR, speaking Envoy's protos as Envoy does.
type authzClient struct {
	t      *testing.T
	conn   *grpc.ClientConn
	authz  authv3.AuthorizationClient
	health healthpb.HealthClient
}

func dialAuthz(t *testing.T, g *gate) *authzClient {
	t.Helper()
	if g.l.AuthzGRPC == "" {
		t.Fatal("keygate has no authz_grpc listener")
	}
	conn, err := grpc.NewClient("passthrough:///"+g.l.AuthzGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &authzClient{t: t, conn: conn, authz: authv3.NewAuthorizationClient(conn), health: healthpb.NewHealthClient(conn)}
}

// checkRequest is the CheckRequest Envoy sends for a client request from
// 203.0.113.7: lower-case headers and pseudo-headers in the map, the
// request target with its query in path.
func checkRequest(method, target string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{":method": method, ":path": target, ":authority": "api.example.com", ":scheme": "http",
		"x-request-id": "7d4b1f0e", "user-agent": "curl/8"}
	for k, v := range headers {
		h[strings.ToLower(k)] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "203.0.113.7", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40512}}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: target, Host: "api.example.com", Scheme: "http", Protocol: "HTTP/1.1", Headers: h,
		}},
	}}
}

// check sends cr with Envoy's default ext_authz timeout (200ms, relaxed
// here to 5s: the machine may be loaded; TestAuthzGRPCDeadline holds the
// real one).
func (c *authzClient) check(cr *authv3.CheckRequest) *authv3.CheckResponse {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.authz.Check(ctx, cr)
	if err != nil {
		c.t.Fatalf("Check: %v", err)
	}
	return resp
}

// denied is a denied response, as Envoy hands it to the client.
type denied struct {
	status  int
	headers map[string]string
	body    string
}

func deniedOf(t *testing.T, resp *authv3.CheckResponse) denied {
	t.Helper()
	d := resp.GetDeniedResponse()
	if d == nil || codes.Code(resp.GetStatus().GetCode()) == codes.OK {
		t.Fatalf("not a denial: %v", resp)
	}
	out := denied{status: int(d.GetStatus().GetCode()), headers: map[string]string{}, body: d.GetBody()}
	for _, h := range d.GetHeaders() {
		out.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return out
}

// allowed is an OK response: the headers Envoy sets on the request
// upstream, those it removes, and those it adds to the client's response.
type allowed struct {
	upstream map[string]string
	remove   []string
	client   map[string]string
}

func allowedOf(t *testing.T, resp *authv3.CheckResponse) allowed {
	t.Helper()
	ok := resp.GetOkResponse()
	if ok == nil || codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Fatalf("not OK: %v", resp)
	}
	out := allowed{upstream: map[string]string{}, client: map[string]string{}, remove: ok.GetHeadersToRemove()}
	for _, h := range ok.GetHeaders() {
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %s would not replace the client's copy: %v", h.GetHeader().GetKey(), h.GetAppendAction())
		}
		out.upstream[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	for _, h := range ok.GetResponseHeadersToAdd() {
		out.client[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return out
}

// TestAuthzGRPC: keygate as Envoy's ext_authz service alone (no
// KEYGATE_UPSTREAM_URL), over a real gRPC client: the data path's answers
// as denials, identity headers and credential removal on OK, one charge per
// OK decision, quota and rate limits with Retry-After, health checking,
// and 503 when the store is down in closed mode.
func TestAuthzGRPC(t *testing.T) {
	srv := redistest.Start(t)
	g := startGate(t, map[string]string{"KEYGATE_AUTHZ_GRPC_ADDR": "127.0.0.1:0", "KEYGATE_REDIS_URL": srv.URL(),
		"KEYGATE_FAILURE_MODE": "closed", "KEYGATE_REDIS_TIMEOUT": "1s", "KEYGATE_LOG_LEVEL": "info"})
	c := dialAuthz(t, g)
	org, ks := g.setupOrg(1, 3, "month", map[string][]string{"reader": {"read"}, "admin": {"admin"}})

	hs, err := c.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
	if err != nil || hs.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hs, err)
	}

	t.Run("no key", func(t *testing.T) {
		d := deniedOf(t, c.check(checkRequest("GET", "/v1/things", nil)))
		if d.status != 401 || d.body != `{"statusCode":401,"statusMessage":"Valid API key required"}`+"\n" || d.headers["content-type"] != "application/json" {
			t.Errorf("got %+v", d)
		}
	})
	t.Run("minted key", func(t *testing.T) {
		d := deniedOf(t, c.check(checkRequest("GET", "/v1/things", map[string]string{"x-api-key": "kg_" + strings.Repeat("a", 40)})))
		var e dataErrorBody
		if d.status != 403 || json.Unmarshal([]byte(d.body), &e) != nil || e.Message != "Invalid API key" {
			t.Errorf("got %+v", d)
		}
	})
	t.Run("permission", func(t *testing.T) {
		d := deniedOf(t, c.check(checkRequest("POST", "/v1/things", map[string]string{"x-api-key": ks["reader"].AccessSecret})))
		if d.status != 403 || !strings.Contains(d.body, "write") {
			t.Errorf("got %+v", d)
		}
	})
	t.Run("non-canonical path", func(t *testing.T) {
		d := deniedOf(t, c.check(checkRequest("GET", "/v1/%00x", map[string]string{"x-api-key": ks["reader"].AccessSecret})))
		if d.status != 400 || !strings.Contains(d.body, "Non-canonical request path") {
			t.Errorf("got %+v", d)
		}
	})
	if u := orgUsage(t, g, org); u != 0 {
		t.Fatalf("refusals charged %d", u)
	}

	t.Run("good key", func(t *testing.T) {
		a := allowedOf(t, c.check(checkRequest("GET", "/v1/things?page=2", map[string]string{
			"authorization": "Bearer " + ks["admin"].AccessSecret, "x_keygate_org_id": "spoofed", "x-keygate-org-id": "spoofed"})))
		if a.upstream["x-keygate-org-id"] != org || a.upstream["x-keygate-key-id"] != ks["admin"].UID ||
			a.upstream["x-keygate-key-name"] != "admin" || a.upstream["x-keygate-permissions"] != "admin" {
			t.Errorf("identity headers %v", a.upstream)
		}
		for _, h := range []string{"authorization", "x-api-key", "x-access-key", "x-access-secret", "x-access-signature", "x_keygate_org_id"} {
			if !slices.Contains(a.remove, h) {
				t.Errorf("headers_to_remove %v lacks %s", a.remove, h)
			}
		}
		if !strings.Contains(a.client["ratelimit-policy"], `"org";q=3`) || !strings.HasPrefix(a.client["ratelimit"], `"org";r=2`) {
			t.Errorf("RateLimit headers %v", a.client)
		}
	})
	t.Run("another's Authorization is kept", func(t *testing.T) {
		a := allowedOf(t, c.check(checkRequest("GET", "/v1/things", map[string]string{
			"x-api-key": ks["reader"].AccessSecret, "authorization": "Basic dXNlcjpwYXNz"})))
		if slices.Contains(a.remove, "authorization") || !slices.Contains(a.remove, "x-api-key") {
			t.Errorf("headers_to_remove %v", a.remove)
		}
	})
	if u := orgUsage(t, g, org); u != 2 {
		t.Fatalf("two OK decisions charged %d", u)
	}
	t.Run("quota exhausted", func(t *testing.T) {
		allowedOf(t, c.check(checkRequest("GET", "/v1/things", map[string]string{"x-api-key": ks["reader"].AccessSecret})))
		d := deniedOf(t, c.check(checkRequest("GET", "/v1/things", map[string]string{"x-api-key": ks["reader"].AccessSecret})))
		var e dataErrorBody
		if d.status != 429 || json.Unmarshal([]byte(d.body), &e) != nil || !strings.HasPrefix(e.Message, "Organization quota exceeded") {
			t.Errorf("got %+v", d)
		}
		if ra, err := strconv.Atoi(d.headers["retry-after"]); err != nil || ra < 1 {
			t.Errorf("Retry-After %q", d.headers["retry-after"])
		}
	})
	if u := orgUsage(t, g, org); u != 3 {
		t.Fatalf("three OK decisions charged %d", u)
	}

	t.Run("rate limit", func(t *testing.T) {
		var k newKey
		g.admin("POST", "/admin/v1/plans", map[string]any{"id": 2, "name": "big", "period": "month", "max_api_requests": 1000}, 201, nil)
		var o struct {
			ID string `json:"id"`
		}
		g.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Rated", "plan_id": 2}, 201, &o)
		g.admin("POST", "/admin/v1/orgs/"+o.ID+"/keys", map[string]any{"name": "k", "permissions": []string{"read"},
			"rate_limit": map[string]any{"requests": 1, "per": "1h"}}, 201, &k)
		hdr := map[string]string{"x-api-key": k.AccessSecret}
		allowedOf(t, c.check(checkRequest("GET", "/v1/things", hdr)))
		d := deniedOf(t, c.check(checkRequest("GET", "/v1/things", hdr)))
		if d.status != 429 || !strings.Contains(d.body, "Rate limit exceeded") {
			t.Errorf("got %+v", d)
		}
		if ra, err := strconv.Atoi(d.headers["retry-after"]); err != nil || ra < 1 {
			t.Errorf("Retry-After %q", d.headers["retry-after"])
		}
		if u := orgUsage(t, g, o.ID); u != 1 {
			t.Errorf("one OK decision charged %d", u)
		}
	})

	t.Run("no data path", func(t *testing.T) {
		status, _, body := call(t, "GET", "http://"+g.l.Data+"/v1/things", apiKey(ks["admin"].AccessSecret), "")
		if status != 404 {
			t.Errorf("data path without upstream: %d %s", status, body)
		}
		if status, _, _ := call(t, "GET", "http://"+g.l.Data+"/api/v1/account", apiKey(ks["admin"].AccessSecret), ""); status != 200 {
			t.Errorf("self-served route: %d", status)
		}
		if u := orgUsage(t, g, org); u != 3 {
			t.Errorf("usage %d after the data listener's answers", u)
		}
	})

	t.Run("store down", func(t *testing.T) {
		srv.Stop()
		d := deniedOf(t, c.check(checkRequest("GET", "/v1/things", map[string]string{"x-api-key": ks["admin"].AccessSecret})))
		if d.status != 503 || !strings.Contains(d.body, "Key store unavailable") || d.headers["retry-after"] == "" {
			t.Errorf("got %+v", d)
		}
	})
}

// TestAuthzGRPCDeadline: Envoy gives up on a check after its ext_authz
// timeout (200ms by default) and so does keygate: with the store frozen
// and KEYGATE_REDIS_TIMEOUT at 5s, the check ends (client_closed) by the
// caller's deadline, long before the store timeout. Leases are off: a
// held block would admit without the store.
func TestAuthzGRPCDeadline(t *testing.T) {
	srv := redistest.Start(t)
	g := startGate(t, map[string]string{"KEYGATE_AUTHZ_GRPC_ADDR": "127.0.0.1:0", "KEYGATE_REDIS_URL": srv.URL(),
		"KEYGATE_FAILURE_MODE": "closed", "KEYGATE_REDIS_TIMEOUT": "5s", "KEYGATE_LOG_LEVEL": "info", "KEYGATE_QUOTA_LEASES": "off"})
	c := dialAuthz(t, g)
	_, ks := g.setupOrg(1, 100, "month", map[string][]string{"k": {"read"}})
	cr := checkRequest("GET", "/v1/things", map[string]string{"x-api-key": ks["k"].AccessSecret})
	allowedOf(t, c.check(cr)) // the key is cached now: only the charge needs the store

	srv.Pause()
	defer srv.Resume()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.authz.Check(ctx, cr)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Check with the store frozen: %v", err)
	}
	// The server side ends too, within the deadline and some slack, not
	// after the 5s store timeout: it shows in the requests metric.
	want := `outcome="client_closed"`
	for i := 0; ; i++ {
		_, _, body := call(t, "GET", "http://"+g.l.Metrics+"/metrics", nil, "")
		if strings.Contains(string(body), want) {
			break
		}
		if i == 100 || time.Since(start) > 3*time.Second {
			t.Fatalf("the check was still running %s after a 200ms deadline", time.Since(start))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAuthzGRPCGracefulStop: a check in flight when keygate is told to stop
// gets its answer (GracefulStop), not a broken connection.
func TestAuthzGRPCGracefulStop(t *testing.T) {
	srv := redistest.Start(t)
	g := startGate(t, map[string]string{"KEYGATE_AUTHZ_GRPC_ADDR": "127.0.0.1:0", "KEYGATE_REDIS_URL": srv.URL(),
		"KEYGATE_FAILURE_MODE": "closed", "KEYGATE_REDIS_TIMEOUT": "1s", "KEYGATE_LOG_LEVEL": "info"})
	_, ks := g.setupOrg(1, 100, "month", map[string][]string{"k": {"read"}})
	sent := make(chan struct{}, 1)
	conn, err := grpc.NewClient("passthrough:///"+g.l.AuthzGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(sentSignal(sent)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cr := checkRequest("GET", "/v1/things", map[string]string{"x-api-key": ks["k"].AccessSecret})
	srv.Pause()
	type answer struct {
		resp *authv3.CheckResponse
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, cr)
		done <- answer{resp, err}
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("the check was not sent")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- g.stop() }()
	var a answer
	select {
	case a = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("no answer to the check in flight")
	}
	srv.Resume()
	if a.err != nil {
		t.Fatalf("the check in flight failed: %v", a.err)
	}
	if d := deniedOf(t, a.resp); d.status != 503 {
		t.Errorf("check in flight: %+v", d)
	}
	if err := <-stopped; err != nil {
		t.Errorf("stop: %v", err)
	}
}

// sentSignal is a gRPC client stats handler that signals once a request
// message has been written to the connection.
type sentSignal chan struct{}

func (s sentSignal) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (s sentSignal) HandleRPC(_ context.Context, st stats.RPCStats) {
	if _, ok := st.(*stats.OutPayload); ok {
		select {
		case s <- struct{}{}:
		default:
		}
	}
}
func (s sentSignal) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (s sentSignal) HandleConn(context.Context, stats.ConnStats)                       {}

// TestAuthzGRPCSigned: a signed request (gw3 HMAC) is checked over gRPC as
// on the data path: the signature covers the path as sent and the query,
// is spent once (a replay is refused), and its headers are removed.
func TestAuthzGRPCSigned(t *testing.T) {
	g := startGate(t, map[string]string{"KEYGATE_AUTHZ_GRPC_ADDR": "127.0.0.1:0", "KEYGATE_SECRET_KEY": testSecretKeyA, "KEYGATE_LOG_LEVEL": "info"})
	c := dialAuthz(t, g)
	org, ks := g.setupOrg(1, 100, "month", map[string][]string{"k": {"read"}})
	u, hdr := signed(t, "GET", "http://api.example.com/v1/a%20b/../c?x=1", ks["k"])
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	cr := checkRequest("GET", pu.RequestURI(), hdr)
	a := allowedOf(t, c.check(cr))
	for _, h := range []string{"x-access-key", "x-access-signature"} {
		if !slices.Contains(a.remove, h) {
			t.Errorf("headers_to_remove %v lacks %s", a.remove, h)
		}
	}
	if d := deniedOf(t, c.check(cr)); d.status != 401 || !strings.Contains(d.body, "Request signature already used") {
		t.Errorf("replay: %+v", d)
	}
	u2, hdr2 := signed(t, "GET", "http://api.example.com/v1/a?x=1", ks["k"])
	pu2, _ := url.Parse(u2)
	if d := deniedOf(t, c.check(checkRequest("GET", strings.Replace(pu2.RequestURI(), "/v1/a", "/v1/b", 1), hdr2))); d.status != 403 {
		t.Errorf("signature for another path: %+v", d)
	}
	if u := orgUsage(t, g, org); u != 1 {
		t.Errorf("one admitted signed check charged %d", u)
	}
}

// TestAuthzGRPCDrain: once keygate is told to stop, gRPC health reports
// NOT_SERVING (Envoy's and the kubelet's health checks take it out), while
// checks keep being answered for KEYGATE_SHUTDOWN_DELAY.
func TestAuthzGRPCDrain(t *testing.T) {
	g := startGate(t, map[string]string{"KEYGATE_AUTHZ_GRPC_ADDR": "127.0.0.1:0", "KEYGATE_SHUTDOWN_DELAY": "2s", "KEYGATE_LOG_LEVEL": "info"})
	c := dialAuthz(t, g)
	_, ks := g.setupOrg(1, 100, "month", map[string][]string{"k": {"read"}})
	cr := checkRequest("GET", "/v1/things", map[string]string{"x-api-key": ks["k"].AccessSecret})
	allowedOf(t, c.check(cr))
	stopped := make(chan error, 1)
	go func() { stopped <- g.stop() }()
	service := &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"}
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		hs, err := c.health.Check(ctx, service)
		cancel()
		if err == nil && hs.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
		if i == 100 {
			t.Fatalf("health still %v (%v) after the stop began", hs, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	allowedOf(t, c.check(cr)) // still answered while draining
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("stop: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("keygate did not stop")
	}
}
