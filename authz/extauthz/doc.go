// Package extauthz is the gRPC authorization front: Envoy's external
// authorization service (envoy.service.auth.v3.Authorization/Check), for
// Envoy, Istio (action CUSTOM) and Envoy Gateway. Envoy asks it about each
// request before forwarding; it answers with the one decision every front
// shares (gate.Decider.Decide), so the data path and this service cannot
// disagree: OK with the identity headers for the upstream, the RateLimit
// headers for the client and the credential headers to remove, or a denial
// carrying the data path's refusal (status, body, Retry-After).
//
// RequestOf turns a CheckRequest into a gate.Request; it is pure, bounded
// and fuzzed. Server implements the service; NewGRPCServer builds the
// bounded gRPC server it runs on, with gRPC health checking. The caller of
// this service is a trusted proxy, not the client: the client's address is
// the one Envoy reports as the request's source, and everything Envoy
// relays from the client (method, path, headers) is hostile input.
package extauthz
