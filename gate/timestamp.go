package gate

import (
	"net/url"
	"strconv"
	"time"
)

// TSError is a problem with the ts query parameter of partner routes and
// signed requests. Its message names the problem for the client.
type TSError struct{ msg string }

func (e *TSError) Error() string { return e.msg }

// CheckTS verifies the ts query parameter: present, a Unix timestamp in
// seconds, within skew of now. It is the one implementation shared by the
// partner routes and signed requests.
//
// It narrows the window in which a captured request can be replayed; it does
// not stop a replay within that window (signed requests add a one-time
// nonce for that) and it proves nothing about who sent the request.
func CheckTS(q url.Values, now time.Time, skew time.Duration) (time.Time, error) {
	raw, ok := q["ts"]
	if !ok || len(raw) == 0 || raw[0] == "" {
		return time.Time{}, &TSError{"missing ts query parameter (Unix time in seconds)"}
	}
	if len(raw) > 1 {
		return time.Time{}, &TSError{"ts query parameter given more than once"}
	}
	secs, err := strconv.ParseInt(raw[0], 10, 64)
	if err != nil {
		return time.Time{}, &TSError{"ts query parameter is not a number of seconds"}
	}
	ts := time.Unix(secs, 0)
	switch d := now.Sub(ts); {
	case d > skew:
		return time.Time{}, &TSError{"ts query parameter is too old (allowed skew " + skew.String() + ")"}
	case d < -skew:
		return time.Time{}, &TSError{"ts query parameter is too far in the future (allowed skew " + skew.String() + ")"}
	}
	return ts, nil
}
