package memstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

// FuzzFindOrgs: any search, cursor and limit either is refused with a
// *keys.InvalidError or lists at most limit organizations that match, after
// the cursor.
func FuzzFindOrgs(f *testing.F) {
	s := memstore.New()
	ctx := context.Background()
	for _, o := range []keys.Org{
		{ID: "acme", Name: "Acme Labs", Email: "ops@acme.example"},
		{ID: "b-2", Name: "Ünïcode Org", Email: "x@ü.example"},
		{ID: "c", Name: "c", Email: ""},
	} {
		o.PlanID, o.CreatedAt = 1, time.Now()
		if err := s.CreateOrg(ctx, o); err != nil {
			f.Fatal(err)
		}
	}
	f.Add("", "", 10)
	f.Add("acme", "acme\x00acme", 1)
	f.Add("ÜN", "", 2)
	f.Add("a", "zz", 0)
	f.Add("\x00", "\x00", 501)
	f.Fuzz(func(t *testing.T, search, after string, limit int) {
		page, err := s.FindOrgs(ctx, keys.OrgQuery{Search: search, After: after, Limit: limit})
		var inv *keys.InvalidError
		if err != nil {
			if !errors.As(err, &inv) {
				t.Fatalf("FindOrgs(%q, %q, %d): %v, want a *keys.InvalidError", search, after, limit, err)
			}
			return
		}
		q, _ := keys.OrgQuery{Search: search, After: after, Limit: limit}.Normalize()
		if len(page.Orgs) > limit || (page.Next != "" && page.Next <= after) {
			t.Fatalf("FindOrgs(%q, %q, %d): %d orgs, next %q", search, after, limit, len(page.Orgs), page.Next)
		}
		for _, o := range page.Orgs {
			if _, ok := o.SearchTerm(q.Search); !ok {
				t.Fatalf("FindOrgs(%q): %s does not match", search, o.ID)
			}
		}
	})
}
