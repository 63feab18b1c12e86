package gate

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLazyDeadline(t *testing.T) {
	t.Run("deadline without a wait", func(t *testing.T) {
		c := withLazyDeadline(context.Background(), time.Now().Add(-time.Millisecond))
		defer c.release()
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("past its deadline, Err = %v", c.Err())
		}
		if c.inner != nil {
			t.Fatal("Err started a timer")
		}
	})
	t.Run("Done fires at the deadline", func(t *testing.T) {
		c := withLazyDeadline(context.Background(), time.Now().Add(20*time.Millisecond))
		defer c.release()
		if c.Err() != nil {
			t.Fatalf("before its deadline, Err = %v", c.Err())
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done did not fire 5s after a 20ms deadline")
		}
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err = %v", c.Err())
		}
	})
	t.Run("parent", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
		c := withLazyDeadline(parent, time.Now().Add(time.Hour))
		defer c.release()
		if c.Value(ctxKey{}) != "v" {
			t.Fatal("a parent's value is lost")
		}
		cancel()
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("after the parent's cancel, Err = %v", c.Err())
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done did not fire after the parent's cancel")
		}
	})
	t.Run("earlier parent deadline", func(t *testing.T) {
		at := time.Now().Add(time.Minute)
		parent, cancel := context.WithDeadline(context.Background(), at)
		defer cancel()
		c := withLazyDeadline(parent, at.Add(time.Hour))
		if d, ok := c.Deadline(); !ok || !d.Equal(at) {
			t.Fatalf("Deadline = %v %t, want the parent's %v", d, ok, at)
		}
	})
}

type ctxKey struct{}
