package gw3

import "testing"

func TestObjectKeepsOrder(t *testing.T) {
	n := int64(3)
	b, err := object{{"z", 1}, {"a", "x"}, {"m", (*int64)(nil)}, {"n", &n}}.MarshalJSON()
	if err != nil || string(b) != `{"z":1,"a":"x","m":null,"n":3}` {
		t.Errorf("got %s, %v", b, err)
	}
}
