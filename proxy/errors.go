package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/quota"
)

// Outcomes of a request, the values of the outcome label and of the access
// log's outcome field.
const (
	outcomeAdmitted          = "admitted"
	outcomeNoCredential      = "no_credential"
	outcomeInvalidCredential = "invalid_credential"
	outcomeForbidden         = "forbidden"
	outcomeQuotaExceeded     = "quota_exceeded"
	outcomeStoreUnavailable  = "store_unavailable"
	outcomeUpstreamError     = "upstream_error"
	outcomeUpstreamTimeout   = "upstream_timeout"
	outcomeBadRequest        = "bad_request"
	outcomeInternal          = "internal_error"
	// outcomeClientClosed: the client went away before keygate could
	// answer (status 499, as nginx logs it); not a store or upstream fault.
	outcomeClientClosed = "client_closed"
)

// statusClientClosed is written (for the log; nobody reads it) when the
// client has gone.
const statusClientClosed = 499

// maxConcurrentLogins bounds the password checks running at once.
const maxConcurrentLogins = 2

// Errors of the forwarding step, and of an overloaded login.
var (
	// errBusy: too many password checks at once; the client may retry.
	errBusy            = errors.New("too many logins at once")
	errUpstream        = errors.New("upstream unreachable")
	errUpstreamTimeout = errors.New("upstream did not answer in time")
)

// badRequestError is a client mistake on a self-served route.
type badRequestError struct {
	status int
	msg    string
}

func (e *badRequestError) Error() string { return e.msg }

// badRequest returns a 400 error with a message for the client.
func badRequest(format string, args ...any) error {
	return &badRequestError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// problem is an error classified for an HTTP answer: the one mapping from
// domain errors to statuses, used by every envelope.
type problem struct {
	status     int
	message    string
	outcome    string
	retryAfter time.Duration // set → Retry-After header
	// internal marks errors whose details are logged, not shown.
	internal bool
}

// classify maps err to its HTTP problem. now is needed for Retry-After.
func classify(err error, now time.Time) problem {
	var (
		perm     *keys.PermissionError
		exceeded *quota.ExceededError
		invalid  *keys.InvalidError
		bad      *badRequestError
		tooBig   *http.MaxBytesError
		ts       *tsError
	)
	switch {
	case errors.Is(err, keys.ErrNoCredential):
		return problem{status: http.StatusUnauthorized, message: "Valid API key required", outcome: outcomeNoCredential}
	case errors.Is(err, keys.ErrInvalidCredential):
		return problem{status: http.StatusForbidden, message: "Invalid API key", outcome: outcomeInvalidCredential}
	case errors.Is(err, keys.ErrBadSignature):
		return problem{status: http.StatusForbidden, message: "Invalid request signature", outcome: outcomeInvalidCredential}
	case errors.Is(err, keys.ErrSigningOff):
		return problem{status: http.StatusForbidden, message: "Signed requests are not enabled on this gateway; send the secret instead", outcome: outcomeInvalidCredential}
	case errors.Is(err, keys.ErrNotSignable):
		return problem{status: http.StatusForbidden, message: "API key cannot sign requests: it was created while request signing was off; create a new key", outcome: outcomeInvalidCredential}
	case errors.As(err, &perm):
		return problem{status: http.StatusForbidden, message: perm.Error(), outcome: outcomeForbidden}
	case errors.As(err, &exceeded):
		p := problem{status: http.StatusTooManyRequests, outcome: outcomeQuotaExceeded,
			message: exceededMessage(exceeded)}
		if d := exceeded.Window.Remaining(now); d > 0 {
			p.retryAfter = d
		}
		return p
	case errors.Is(err, quota.ErrReplay):
		return problem{status: http.StatusUnauthorized, message: "Request signature already used", outcome: outcomeInvalidCredential}
	case errors.Is(err, keys.ErrUnavailable), errors.Is(err, quota.ErrUnavailable):
		return problem{status: http.StatusServiceUnavailable, message: "Key store unavailable, retry shortly", outcome: outcomeStoreUnavailable, retryAfter: time.Second}
	case errors.Is(err, errBusy):
		return problem{status: http.StatusServiceUnavailable, message: "Too many logins at once, retry shortly", outcome: outcomeBadRequest, retryAfter: time.Second}
	case errors.Is(err, errUpstreamTimeout):
		return problem{status: http.StatusGatewayTimeout, message: "Upstream did not answer in time", outcome: outcomeUpstreamTimeout}
	case errors.Is(err, errUpstream):
		return problem{status: http.StatusBadGateway, message: "Upstream unreachable", outcome: outcomeUpstreamError}
	case errors.As(err, &tooBig):
		return problem{status: http.StatusRequestEntityTooLarge, message: fmt.Sprintf("Request body larger than %d bytes", tooBig.Limit), outcome: outcomeBadRequest}
	case errors.As(err, &ts):
		return problem{status: http.StatusUnauthorized, message: ts.msg, outcome: outcomeBadRequest}
	case errors.As(err, &bad):
		return problem{status: bad.status, message: bad.msg, outcome: outcomeBadRequest}
	case errors.As(err, &invalid):
		return problem{status: http.StatusBadRequest, message: invalid.Error(), outcome: outcomeBadRequest}
	case errors.Is(err, keys.ErrOverAllocated):
		return problem{status: http.StatusConflict, message: "Per-key quotas would exceed the organization quota", outcome: outcomeBadRequest}
	case errors.Is(err, keys.ErrConflict):
		return problem{status: http.StatusConflict, message: "Already exists", outcome: outcomeBadRequest}
	case errors.Is(err, keys.ErrNotFound):
		return problem{status: http.StatusNotFound, message: "Not found", outcome: outcomeBadRequest}
	default:
		return problem{status: http.StatusInternalServerError, message: "Internal error", outcome: outcomeInternal, internal: true}
	}
}

func exceededMessage(e *quota.ExceededError) string {
	if e.Scope == quota.ScopeKey {
		return fmt.Sprintf("API key quota exceeded: %d of %d requests used", e.Used, e.Limit)
	}
	return fmt.Sprintf("Organization quota exceeded: %d of %d requests used", e.Used, e.Limit)
}

// setRetryAfter writes Retry-After in whole seconds, rounded up.
func setRetryAfter(h http.Header, d time.Duration) {
	if d > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10))
	}
}

// writeJSON writes v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
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

// dataError is the error body of the data path and of seed 002.
type dataError struct {
	Error      bool   `json:"error"`
	StatusCode int    `json:"statusCode"`
	Message    string `json:"message"`
}

// noCredentialError is the 401 body of the data path and of seed 002.
type noCredentialError struct {
	StatusCode    int    `json:"statusCode"`
	StatusMessage string `json:"statusMessage"`
}

// writeDataProblem renders p in the data path's shapes.
func writeDataProblem(w http.ResponseWriter, p problem) {
	setRetryAfter(w.Header(), p.retryAfter)
	if p.status == http.StatusUnauthorized && p.outcome == outcomeNoCredential {
		writeJSON(w, p.status, noCredentialError{StatusCode: p.status, StatusMessage: p.message})
		return
	}
	writeJSON(w, p.status, dataError{Error: true, StatusCode: p.status, Message: p.message})
}
