package extauthz

import (
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// Bounds of the gRPC server, beside those of RequestOf: what one caller can
// make keygate hold. The connections themselves are bounded by the
// listener (KEYGATE_MAX_CONNECTIONS).
const (
	// MaxMessageBytes bounds a CheckRequest on the wire: 64 KiB of headers
	// and the attributes Envoy and Istio add (peer certificates, metadata)
	// fit; a request body does not belong in a check.
	MaxMessageBytes = 512 << 10
	// MaxConcurrentStreams bounds the checks in flight on one connection
	// (Envoy multiplexes every check of a worker thread over one).
	MaxConcurrentStreams = 1024
	// maxMetadataBytes bounds the gRPC metadata (HTTP/2 headers) of a call.
	maxMetadataBytes = 16 << 10
)

// NewGRPCServer returns a bounded gRPC server serving s and gRPC health
// checking (grpc.health.v1; the overall status "" and the Authorization
// service's name), and the health server, which the caller sets to
// NOT_SERVING (Shutdown) when it starts draining.
func NewGRPCServer(s *Server) (*grpc.Server, *health.Server) {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.MaxHeaderListSize(maxMetadataBytes),
		grpc.ConnectionTimeout(10*time.Second),
		// Clients may ping to keep idle connections up, at most every 10s;
		// a client pinging more often is disconnected. The server pings an
		// idle connection after 2 minutes and drops it if unanswered.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
	)
	authv3.RegisterAuthorizationServer(g, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	return g, hs
}
