package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keygate/keygate/keys"
)

// findAll pages through FindOrgs with limit and returns the ids in order,
// failing when a page is larger than limit or the listing does not end.
func findAll(t *testing.T, s keys.Store, search string, limit int) []string {
	t.Helper()
	var ids []string
	q := keys.OrgQuery{Search: search, Limit: limit}
	for range 100 {
		page, err := s.FindOrgs(ctxFor(t), q)
		if err != nil {
			t.Fatalf("FindOrgs(%+v): %v", q, err)
		}
		if len(page.Orgs) > limit {
			t.Fatalf("FindOrgs(%+v): %d organizations, limit %d", q, len(page.Orgs), limit)
		}
		for _, o := range page.Orgs {
			ids = append(ids, o.ID)
		}
		if page.Next == "" {
			return ids
		}
		if len(page.Orgs) == 0 {
			t.Fatalf("FindOrgs(%+v): an empty page that is not the last", q)
		}
		q.After = page.Next
	}
	t.Fatalf("FindOrgs(%q) did not end after 100 pages", search)
	return nil
}

func testFindOrgs(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	var all, acme, globex, tens []string
	for i := range 23 {
		o := newOrg(fmt.Sprintf("org-%02d", i))
		if i%2 == 0 {
			o.Name, o.Email = fmt.Sprintf("Acme Labs %02d", i), fmt.Sprintf("ops%02d@acme.example", i)
			acme = append(acme, o.ID)
		} else {
			o.Name, o.Email = fmt.Sprintf("Globex %02d", i), fmt.Sprintf("it%02d@globex.example", i)
			globex = append(globex, o.ID)
		}
		if i >= 10 && i < 20 {
			tens = append(tens, o.ID)
		}
		mustCreateOrg(t, s, o)
		all = append(all, o.ID)
	}
	for _, limit := range []int{1, 7, 23, 50} {
		if got := findAll(t, s, "", limit); !slices.Equal(got, all) {
			t.Errorf("listing by %d: %v, want %v", limit, got, all)
		}
	}
	// Each organization is listed once, however many of its terms match:
	// "Acme Labs 00", "acme", "acme.example" all start with "acme".
	for search, want := range map[string][]string{
		"acme": acme, "ACME": acme, " Acme ": acme, "labs": acme, "globex.ex": globex, "it0": globex[:5],
		"org-1": tens, "org-": all, "zzz": nil, "acme labs 04": {"org-04"}, "ops04@acme.example": {"org-04"},
	} {
		for _, limit := range []int{3, 500} {
			if got := findAll(t, s, search, limit); !slices.Equal(got, want) {
				t.Errorf("search %q by %d: %v, want %v", search, limit, got, want)
			}
		}
	}
	// A page that holds exactly the rest is the last.
	page, err := s.FindOrgs(ctx, keys.OrgQuery{Search: "acme", Limit: len(acme)})
	if err != nil || len(page.Orgs) != len(acme) || page.Next != "" {
		t.Errorf("FindOrgs(acme, exact limit) = %d orgs, next %q, %v; want %d and the last page", len(page.Orgs), page.Next, err, len(acme))
	}

	// A change of name or email moves the organization between searches.
	o, err := s.Org(ctx, "org-00")
	if err != nil {
		t.Fatal(err)
	}
	o.Name, o.Email = "Initech", "bill@initech.example"
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg: %v", err)
	}
	if got := findAll(t, s, "acme", 4); !slices.Equal(got, acme[1:]) {
		t.Errorf("search acme after the rename: %v, want %v", got, acme[1:])
	}
	if got := findAll(t, s, "initech", 4); !slices.Equal(got, []string{"org-00"}) {
		t.Errorf("search initech after the rename: %v, want [org-00]", got)
	}

	var inv *keys.InvalidError
	for _, q := range []keys.OrgQuery{
		{Limit: 0}, {Limit: keys.MaxOrgPage + 1}, {Search: "a\nb", Limit: 1},
		{Search: string(make([]byte, keys.MaxSearchLen+1)), Limit: 1},
		{Search: "acme", After: "globex\x00org-01", Limit: 1}, {Search: "acme", After: "acme", Limit: 1},
	} {
		if _, err := s.FindOrgs(ctx, q); !errors.As(err, &inv) {
			t.Errorf("FindOrgs(%+v) = %v, want a *keys.InvalidError", q, err)
		}
	}
}
