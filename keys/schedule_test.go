package keys

import (
	"testing"
	"time"
)

func TestApplyScheduledPlan(t *testing.T) {
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	next := int64(2)
	scheduled := Org{PlanID: 1, NextPlanID: &next, NextPlanAt: at}
	cases := []struct {
		name    string
		o       Org
		now     time.Time
		applied bool
		plan    int64
	}{
		{"nothing scheduled", Org{PlanID: 1}, at, false, 1},
		{"before the period ends", scheduled, at.Add(-time.Second), false, 1},
		{"when it ends", scheduled, at, true, 2},
		{"after", scheduled, at.Add(time.Hour), true, 2},
		{"no instant (legacy record)", Org{PlanID: 1, NextPlanID: &next}, at, false, 1},
	}
	for _, tc := range cases {
		got, applied := tc.o.ApplyScheduledPlan(tc.now)
		if applied != tc.applied || got.PlanID != tc.plan {
			t.Errorf("%s: plan %d applied %v, want %d %v", tc.name, got.PlanID, applied, tc.plan, tc.applied)
		}
		if applied && (got.NextPlanID != nil || !got.NextPlanAt.IsZero()) {
			t.Errorf("%s: schedule not cleared: %+v", tc.name, got)
		}
	}
}
