package extauthz

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.uber.org/zap"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/metrics"
)

// Front is the value of the front label and log field of this service.
const Front = metrics.FrontAuthzGRPC

// Options configure a Server. Gate is required.
type Options struct {
	// Gate decides whether a request may pass.
	Gate *gate.Decider
	// RejectNonCanonical refuses a non-canonical path instead of matching
	// its canonical form (KEYGATE_PATH_NORMALIZE=reject).
	RejectNonCanonical bool
	Log                *zap.Logger
	Metrics            *metrics.Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the Authorization service. It is safe for concurrent use;
// create it with New.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	opt         Options
	log, access *zap.Logger
}

// New returns a Server for o. A missing Gate is a programming error in the
// caller and panics here rather than on the first check.
func New(o Options) *Server {
	if o.Gate == nil {
		panic("extauthz.New: Options.Gate is required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Server{opt: o, log: o.Log.Named("extauthz"), access: o.Log.Named("access")}
}

// Check decides the request a CheckRequest stands for. Every refusal,
// malformed checks included, is a denied response in the data path's
// shape; an error is returned only when the caller has gone (its deadline
// passed or it cancelled), when no answer can reach it anyway. The store
// calls of the decision end by the caller's deadline (Envoy's ext_authz
// timeout, 200ms by default) when it is earlier than KEYGATE_REDIS_TIMEOUT.
func (s *Server) Check(ctx context.Context, cr *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := s.opt.Now()
	var from string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		from = p.Addr.String()
	}
	req, err := RequestOf(cr, from, start, s.opt.RejectNonCanonical)
	var v gate.Verdict
	if err == nil {
		v, err = s.opt.Gate.Decide(ctx, &req)
	}
	rec := listener.Record{Org: v.Principal.Key.OrgID, Key: v.Principal.Key.UID}
	var resp *authv3.CheckResponse
	switch {
	case err == nil:
		rec.Status, rec.Outcome, rec.WouldLimit = http.StatusOK, metrics.OutcomeAdmitted, v.WouldLimit()
		resp = okResponse(&v, req.Header, start)
	case ctx.Err() != nil || deadlinePassed(ctx):
		// The caller gave up (or its deadline passed as the store call
		// timed out by it, a moment before the context says so): nobody
		// reads an answer now.
		rec.Status, rec.Outcome = gate.StatusClientClosed, metrics.OutcomeClientClosed
		s.finish(req.Method, req.Path, &rec, start)
		cerr := ctx.Err()
		if cerr == nil {
			cerr = context.DeadlineExceeded
		}
		return nil, status.FromContextError(cerr).Err()
	default:
		p := gate.Classify(err, start)
		if p.Internal {
			s.log.Error("check failed", zap.String("path", req.Path), zap.Error(err))
		}
		rec.Status, rec.Outcome = p.Status, p.Outcome
		resp = deniedResponse(p)
	}
	s.finish(req.Method, req.Path, &rec, start)
	return resp, nil
}

// finish writes the access log line and the request metrics of a check, as
// the data listener does for a request, with front=authz_grpc.
func (s *Server) finish(method, path string, r *listener.Record, start time.Time) {
	listener.Finish(s.access, s.opt.Metrics, Front, method, path, r, s.opt.Now().Sub(start))
}

// identityHeaders are the identity headers in the order they are sent, and
// their lower-case names (Envoy's spelling).
var identityHeaders = [...][2]string{
	{gate.HeaderOrgID, strings.ToLower(gate.HeaderOrgID)},
	{gate.HeaderKeyID, strings.ToLower(gate.HeaderKeyID)},
	{gate.HeaderKeyName, strings.ToLower(gate.HeaderKeyName)},
	{gate.HeaderPermissions, strings.ToLower(gate.HeaderPermissions)},
}

// credentialNames are the lower-case credential headers to remove, with and
// without Authorization (gate.CredentialHeaders).
var credentialNames = [2][]string{lowerAll(gate.CredentialHeaders(false)), lowerAll(gate.CredentialHeaders(true))}

func lowerAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ToLower(n)
	}
	return out
}

// okResponse admits a request: the identity headers set on the request
// upstream (overwriting any the client sent), the credential headers and
// every other client header an upstream could read as an identity header
// removed (gate.StripInbound's rule), and the RateLimit headers added to
// the client's response, as the data path gives them.
func okResponse(v *gate.Verdict, in http.Header, now time.Time) *authv3.CheckResponse {
	h := make(http.Header, len(identityHeaders)+2)
	gate.SetIdentity(h, &v.Principal)
	opts := newOptions(len(identityHeaders) + 2)
	ok := &authv3.OkHttpResponse{Headers: make([]*corev3.HeaderValueOption, 0, len(identityHeaders))}
	for _, n := range identityHeaders {
		ok.Headers = append(ok.Headers, opts.next(n[1], h[n[0]][0]))
	}
	bearer := 0
	if v.Bearer {
		bearer = 1
	}
	ok.HeadersToRemove = credentialNames[bearer]
	for name := range in {
		if guard.IsIdentityHeader(name) && !isSetIdentity(name) {
			if len(ok.HeadersToRemove) == len(credentialNames[bearer]) {
				ok.HeadersToRemove = slices.Clone(ok.HeadersToRemove) // the shared slice stays as it is
			}
			ok.HeadersToRemove = append(ok.HeadersToRemove, strings.ToLower(name))
		}
	}
	clear(h)
	v.SetHeaders(h, now)
	for _, n := range [...][2]string{{"Ratelimit-Policy", "ratelimit-policy"}, {"Ratelimit", "ratelimit"}} {
		if vs := h[n[0]]; len(vs) > 0 {
			ok.ResponseHeadersToAdd = append(ok.ResponseHeadersToAdd, opts.next(n[1], vs[0]))
		}
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

// isSetIdentity reports whether name is one of the identity headers the OK
// response sets, which overwrite the client's copy instead of a removal.
func isSetIdentity(name string) bool {
	for _, n := range identityHeaders {
		if strings.EqualFold(name, n[0]) {
			return true
		}
	}
	return false
}

// options hands out headers that replace any of the same name, from two
// arrays allocated once per response rather than two allocations a header.
type options struct {
	opts []corev3.HeaderValueOption
	vals []corev3.HeaderValue
}

func newOptions(n int) *options {
	return &options{opts: make([]corev3.HeaderValueOption, 0, n), vals: make([]corev3.HeaderValue, 0, n)}
}

// next returns the next header; past the capacity it allocates (the
// arrays are never grown: the pointers handed out stay valid).
func (o *options) next(key, value string) *corev3.HeaderValueOption {
	if len(o.opts) == cap(o.opts) {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	o.vals = o.vals[:len(o.vals)+1]
	hv := &o.vals[len(o.vals)-1]
	hv.Key, hv.Value = key, value
	o.opts = o.opts[:len(o.opts)+1]
	opt := &o.opts[len(o.opts)-1]
	opt.Header, opt.AppendAction = hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	return opt
}

// deniedResponse refuses a request with the data path's answer to p: its
// status, body and headers (Content-Type, Cache-Control, Retry-After),
// rendered by the one writer every front uses (gate.WriteDataProblem).
func deniedResponse(p gate.Problem) *authv3.CheckResponse {
	w := &bufferWriter{h: make(http.Header, 4)}
	gate.WriteDataProblem(w, p)
	names := make([]string, 0, len(w.h))
	for name := range w.h {
		if name != "Content-Length" { // Envoy sets its own for the body
			names = append(names, name)
		}
	}
	slices.Sort(names)
	headers := make([]*corev3.HeaderValueOption, 0, len(names))
	opts := newOptions(len(names))
	for _, name := range names {
		for _, v := range w.h[name] {
			headers = append(headers, opts.next(strings.ToLower(name), v))
		}
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(grpcCode(p.Status)), Message: p.Message},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(w.status)},
			Headers: headers,
			Body:    w.buf.String(),
		}},
	}
}

// grpcCode is the gRPC status of a denial (Envoy only tells OK from not
// OK; the code is for logs and other clients).
func grpcCode(httpStatus int) codes.Code {
	switch httpStatus {
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	default:
		if httpStatus >= 500 {
			return codes.Internal
		}
		return codes.InvalidArgument
	}
}

// bufferWriter is an http.ResponseWriter into memory: a denial is rendered
// by the same code as the data path's answer, then carried in the
// CheckResponse.
type bufferWriter struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (w *bufferWriter) Header() http.Header { return w.h }

func (w *bufferWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *bufferWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.buf.Write(b)
}

// deadlinePassed says ctx's deadline, if it has one, is behind us.
func deadlinePassed(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}
