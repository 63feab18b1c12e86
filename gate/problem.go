package gate

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/quota"
)

// StatusClientClosed is written (for the log; nobody reads it) when the
// client has gone.
const StatusClientClosed = 499

// Errors of the forwarding step, and of an overloaded login.
var (
	// ErrBusy: too many password checks at once; the client may retry.
	ErrBusy            = errors.New("too many logins at once")
	ErrUpstream        = errors.New("upstream unreachable")
	ErrUpstreamTimeout = errors.New("upstream did not answer in time")
	// ErrNonCanonicalPath refuses a path that is not canonical in reject
	// mode, or cannot be made canonical (guard.CanonicalPath).
	ErrNonCanonicalPath = errors.New("non-canonical request path")
	// ErrBodyUnreadable: the client's request body could not be read
	// while it was forwarded (malformed chunked encoding, a cut upload).
	ErrBodyUnreadable = errors.New("request body could not be read")
)

// ClientError is a client mistake with the status and message the client
// sees, on any route.
type ClientError struct {
	Status int
	Msg    string
}

func (e *ClientError) Error() string { return e.Msg }

// BadRequest returns a 400 error with a message for the client.
func BadRequest(format string, args ...any) error {
	return &ClientError{Status: http.StatusBadRequest, Msg: fmt.Sprintf(format, args...)}
}

// Problem is an error classified for an HTTP answer: the one mapping from
// domain errors to statuses, rendered by every front in its envelope.
type Problem struct {
	Status     int
	Message    string
	Outcome    string
	RetryAfter time.Duration // set → Retry-After header
	// Internal marks errors whose details are logged, not shown.
	Internal bool
}

// Classify maps err to its HTTP problem. now is needed for Retry-After.
func Classify(err error, now time.Time) Problem {
	var (
		perm     *keys.PermissionError
		exceeded *quota.ExceededError
		invalid  *keys.InvalidError
		bad      *ClientError
		tooBig   *http.MaxBytesError
		ts       *TSError
		fails    *TooManyFailuresError
		limited  *quota.RateLimitedError
	)
	switch {
	case errors.Is(err, keys.ErrNoCredential):
		return Problem{Status: http.StatusUnauthorized, Message: "Valid API key required", Outcome: metrics.OutcomeNoCredential}
	case errors.Is(err, keys.ErrInvalidCredential):
		return Problem{Status: http.StatusForbidden, Message: "Invalid API key", Outcome: metrics.OutcomeInvalidCredential}
	case errors.Is(err, keys.ErrBadSignature):
		return Problem{Status: http.StatusForbidden, Message: "Invalid request signature", Outcome: metrics.OutcomeInvalidCredential}
	case errors.Is(err, keys.ErrSigningOff):
		return Problem{Status: http.StatusForbidden, Message: "Signed requests are not enabled on this gateway; send the secret instead", Outcome: metrics.OutcomeInvalidCredential}
	case errors.Is(err, keys.ErrNotSignable):
		return Problem{Status: http.StatusForbidden, Message: "API key cannot sign requests: it was created while request signing was off; create a new key", Outcome: metrics.OutcomeInvalidCredential}
	case errors.As(err, &perm):
		return Problem{Status: http.StatusForbidden, Message: perm.Error(), Outcome: metrics.OutcomeForbidden}
	case errors.As(err, &exceeded):
		p := Problem{Status: http.StatusTooManyRequests, Outcome: metrics.OutcomeQuotaExceeded,
			Message: exceededMessage(exceeded)}
		if d := exceeded.Window.Remaining(now); d > 0 {
			p.RetryAfter = d
		}
		return p
	case errors.As(err, &limited):
		p := Problem{Status: http.StatusTooManyRequests, Outcome: metrics.OutcomeRateLimited, Message: rateLimitedMessage(limited)}
		if !limited.CostAboveBurst {
			p.RetryAfter = max(limited.RetryAfter, time.Second)
		}
		return p
	case errors.Is(err, quota.ErrReplay):
		return Problem{Status: http.StatusUnauthorized, Message: "Request signature already used", Outcome: metrics.OutcomeInvalidCredential}
	case errors.Is(err, keys.ErrUnsealable):
		// A key sealed under an operator key this sidecar lacks (an older
		// KEYGATE_SECRET_KEY): the gateway's problem, not the client's.
		return Problem{Status: http.StatusServiceUnavailable, Message: "Signed request cannot be verified on this gateway right now, retry shortly",
			Outcome: metrics.OutcomeInternal, RetryAfter: time.Second, Internal: true}
	case errors.Is(err, keys.ErrUnavailable), errors.Is(err, quota.ErrUnavailable):
		return Problem{Status: http.StatusServiceUnavailable, Message: "Key store unavailable, retry shortly", Outcome: metrics.OutcomeStoreUnavailable, RetryAfter: time.Second}
	case errors.Is(err, ErrBusy):
		return Problem{Status: http.StatusServiceUnavailable, Message: "Too many logins at once, retry shortly", Outcome: metrics.OutcomeBadRequest, RetryAfter: time.Second}
	case errors.Is(err, ErrUpstreamTimeout):
		return Problem{Status: http.StatusGatewayTimeout, Message: "Upstream did not answer in time", Outcome: metrics.OutcomeUpstreamTimeout}
	case errors.Is(err, ErrUpstream):
		return Problem{Status: http.StatusBadGateway, Message: "Upstream unreachable", Outcome: metrics.OutcomeUpstreamError}
	case errors.As(err, &fails):
		return Problem{Status: http.StatusTooManyRequests, Message: "Too many failed authentications", Outcome: metrics.OutcomeInvalidCredential,
			RetryAfter: max(fails.RetryAfter, time.Second)}
	case errors.Is(err, ErrBodyUnreadable):
		return Problem{Status: http.StatusBadRequest, Message: "Request body could not be read", Outcome: metrics.OutcomeBadRequest}
	case errors.Is(err, ErrNonCanonicalPath):
		return Problem{Status: http.StatusBadRequest, Message: "Non-canonical request path", Outcome: metrics.OutcomeBadRequest}
	case errors.As(err, &tooBig):
		return Problem{Status: http.StatusRequestEntityTooLarge, Message: fmt.Sprintf("Request body larger than %d bytes", tooBig.Limit), Outcome: metrics.OutcomeBadRequest}
	case errors.As(err, &ts):
		return Problem{Status: http.StatusUnauthorized, Message: ts.msg, Outcome: metrics.OutcomeBadRequest}
	case errors.As(err, &bad):
		return Problem{Status: bad.Status, Message: bad.Msg, Outcome: metrics.OutcomeBadRequest}
	case errors.As(err, &invalid):
		return Problem{Status: http.StatusBadRequest, Message: invalid.Error(), Outcome: metrics.OutcomeBadRequest}
	case errors.Is(err, keys.ErrOverAllocated):
		return Problem{Status: http.StatusConflict, Message: "Per-key quotas would exceed the organization quota", Outcome: metrics.OutcomeBadRequest}
	case errors.Is(err, keys.ErrConflict):
		return Problem{Status: http.StatusConflict, Message: "Already exists", Outcome: metrics.OutcomeBadRequest}
	case errors.Is(err, keys.ErrNotFound):
		return Problem{Status: http.StatusNotFound, Message: "Not found", Outcome: metrics.OutcomeBadRequest}
	default:
		return Problem{Status: http.StatusInternalServerError, Message: "Internal error", Outcome: metrics.OutcomeInternal, Internal: true}
	}
}

func exceededMessage(e *quota.ExceededError) string {
	if e.Scope == quota.ScopeKey {
		return fmt.Sprintf("API key quota exceeded: %d of %d requests used", e.Used, e.Limit)
	}
	return fmt.Sprintf("Organization quota exceeded: %d of %d requests used", e.Used, e.Limit)
}

func rateLimitedMessage(e *quota.RateLimitedError) string {
	who := "Organization"
	if e.Scope == quota.ScopeKey {
		who = "API key"
	}
	if e.CostAboveBurst {
		return fmt.Sprintf("Rate limit exceeded: the request costs more than the %s rate limit's burst of %d", strings.ToLower(who), e.Limit.EffectiveBurst())
	}
	return fmt.Sprintf("Rate limit exceeded: %s rate limit of %d requests per %s", strings.ToLower(who), e.Limit.Requests, e.Limit.Per)
}

// SetRetryAfter writes Retry-After in whole seconds, rounded up.
func SetRetryAfter(h http.Header, d time.Duration) {
	if d > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10))
	}
}

// WriteJSON writes v as JSON with status: the one JSON writer of every
// front, so every answer has the same headers.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":true,"statusCode":500,"message":"Internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// DataError is the error body of the data path and of seed 002.
type DataError struct {
	Error      bool   `json:"error"`
	StatusCode int    `json:"statusCode"`
	Message    string `json:"message"`
}

// NoCredentialError is the 401 body of the data path and of seed 002.
type NoCredentialError struct {
	StatusCode    int    `json:"statusCode"`
	StatusMessage string `json:"statusMessage"`
}

// WriteDataProblem renders p in the data path's shapes, which the operator
// API and seed 002 share.
func WriteDataProblem(w http.ResponseWriter, p Problem) {
	SetRetryAfter(w.Header(), p.RetryAfter)
	if p.Status == http.StatusUnauthorized && p.Outcome == metrics.OutcomeNoCredential {
		WriteJSON(w, p.Status, NoCredentialError{StatusCode: p.Status, StatusMessage: p.Message})
		return
	}
	WriteJSON(w, p.Status, DataError{Error: true, StatusCode: p.Status, Message: p.Message})
}
