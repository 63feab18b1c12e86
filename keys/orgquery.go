package keys

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// MaxOrgPage bounds the page size of Store.FindOrgs.
const MaxOrgPage = 500

// MaxSearchLen bounds OrgQuery.Search, in bytes.
const MaxSearchLen = 254

// OrgQuery asks Store.FindOrgs for one page of organizations.
type OrgQuery struct {
	// Search, when not empty, keeps the organizations that have a search
	// term (SearchTerms) starting with it, compared in lower case: an id, a
	// name or a word of it, an email address or its domain.
	Search string
	// After is the Next of the previous page; empty for the first.
	After string
	// Limit is the page size, 1 to MaxOrgPage.
	Limit int
}

// OrgPage is one page of Store.FindOrgs.
type OrgPage struct {
	Orgs []Org
	// Next continues the listing (OrgQuery.After); empty on the last page.
	Next string
}

// Normalize lower-cases the search and checks the query; a *InvalidError
// names what is wrong.
func (q OrgQuery) Normalize() (OrgQuery, error) {
	q.Search = strings.ToLower(strings.TrimSpace(q.Search))
	switch {
	case q.Limit < 1 || q.Limit > MaxOrgPage:
		return q, &InvalidError{Field: "limit", Reason: fmt.Sprintf("must be from 1 to %d", MaxOrgPage)}
	case len(q.Search) > MaxSearchLen:
		return q, &InvalidError{Field: "search", Reason: fmt.Sprintf("must be at most %d bytes", MaxSearchLen)}
	case strings.ContainsFunc(q.Search, unicode.IsControl):
		return q, &InvalidError{Field: "search", Reason: "must not contain control characters"}
	case len(q.After) > 2*MaxSearchLen+MaxNameLen || strings.ContainsFunc(q.After, func(r rune) bool { return r != 0 && unicode.IsControl(r) }):
		return q, &InvalidError{Field: "after", Reason: "not a cursor of this listing"}
	}
	if q.Search != "" && q.After != "" {
		term, _, ok := SplitSearchCursor(q.After)
		if !ok || !strings.HasPrefix(term, q.Search) {
			return q, &InvalidError{Field: "after", Reason: "not a cursor of this search"}
		}
	}
	return q, nil
}

// SearchTerms are the lower-case strings an organization is found by: its
// id, its name and each word of it, its email address and the address's
// domain; sorted, without duplicates. The stores index them.
func (o Org) SearchTerms() []string {
	var terms []string
	add := func(s string) {
		if s = strings.ToLower(s); s != "" {
			terms = append(terms, s)
		}
	}
	add(o.ID)
	add(o.Name)
	for _, w := range strings.FieldsFunc(o.Name, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		add(w)
	}
	add(o.Email)
	if at := strings.LastIndexByte(o.Email, '@'); at >= 0 {
		add(o.Email[at+1:])
	}
	slices.Sort(terms)
	return slices.Compact(terms)
}

// SearchTerm returns the first (smallest) of the organization's search terms
// that starts with prefix. A search lists each organization once, under this
// term: the stores order results by (term, id).
func (o Org) SearchTerm(prefix string) (string, bool) {
	for _, t := range o.SearchTerms() {
		if strings.HasPrefix(t, prefix) {
			return t, true
		}
	}
	return "", false
}

// SearchCursor is the position of an organization in a search listing: its
// term, a NUL byte, its id. (Terms and ids hold no NUL.)
func SearchCursor(term, id string) string { return term + "\x00" + id }

// SplitSearchCursor splits a SearchCursor.
func SplitSearchCursor(c string) (term, id string, ok bool) {
	return strings.Cut(c, "\x00")
}
