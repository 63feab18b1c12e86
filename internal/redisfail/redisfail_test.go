package redisfail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
)

func TestUnavailable(t *testing.T) {
	// Real replies from a real server.
	rdb := redistest.Client(t)
	ctx := context.Background()
	_, nilErr := rdb.Get(ctx, "missing").Result()
	_, wrongType := rdb.Do(ctx, "INCR", "x", "extra").Result() // wrong number of arguments: an answer
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"redis.Nil", nilErr, false},
		{"error reply", wrongType, false},
		{"wrapped reply", fmt.Errorf("reading: %w", wrongType), false},
		{"deadline", context.DeadlineExceeded, true},
		{"pool timeout", redis.ErrPoolTimeout, true},
		{"closed client", redis.ErrClosed, true},
		{"eof", io.EOF, true},
		{"net", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
	}
	for _, tc := range cases {
		if got := Unavailable(tc.err); got != tc.want {
			t.Errorf("%s (%v): Unavailable = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
