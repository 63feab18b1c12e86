package console

import (
	"testing"
	"time"
)

// TestSessionsBounded: the store never holds more than its maximum; a full
// store drops expired sessions first, then the one unused the longest.
func TestSessionsBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSessions(3, time.Hour, 12*time.Hour)
	var ids []string
	for i := range 3 {
		id, err := s.create(now.Add(time.Duration(i) * time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	s.get(ids[0], now.Add(10*time.Minute)) // ids[1] is now the least recently used
	id, _ := s.create(now.Add(11 * time.Minute))
	if s.len() != 3 || s.get(ids[1], now.Add(12*time.Minute)) != nil || s.get(ids[0], now.Add(12*time.Minute)) == nil || s.get(id, now.Add(12*time.Minute)) == nil {
		t.Fatalf("full store: %d sessions; want 3 without the least recently used", s.len())
	}
	// Idle and absolute expiry.
	if s.get(ids[2], now.Add(2*time.Hour)) != nil {
		t.Error("a session idle for more than an hour is still live")
	}
	for i := 0; i < 20; i++ {
		s.get(id, now.Add(time.Duration(i)*40*time.Minute))
	}
	if s.get(id, now.Add(13*time.Hour)) != nil {
		t.Error("a session older than 12 hours is still live")
	}
	if s.get("", now) != nil || s.get(string(make([]byte, 100)), now) != nil {
		t.Error("an empty or oversized id found a session")
	}
}
