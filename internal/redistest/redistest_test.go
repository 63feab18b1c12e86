package redistest

import (
	"context"
	"testing"
)

func TestServerStopRestart(t *testing.T) {
	s := Start(t)
	c := NewClient(t, s.Addr())
	ctx := context.Background()
	if err := c.Set(ctx, "a", "1", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	s.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("ping succeeded on a stopped server")
	}
	s.Restart()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
}

func TestCluster(t *testing.T) {
	cl := StartCluster(t)
	c := NewClient(t, cl.Addrs()...)
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		if err := c.Set(ctx, k, "1", 0).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	Flush(t, c)
	if n, err := c.Exists(ctx, "a").Result(); err != nil || n != 0 {
		t.Fatalf("after flush exists(a) = %d, %v", n, err)
	}
}
