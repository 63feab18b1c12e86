// keygate console: the copy buttons of a new key's secret. Everything else
// is plain HTML forms.
"use strict";
document.addEventListener("click", function (ev) {
  var btn = ev.target.closest("button[data-copy]");
  if (!btn) return;
  var src = document.getElementById(btn.getAttribute("data-copy"));
  var note = btn.parentNode.querySelector(".copied");
  var text = src ? src.textContent : "";
  function done(ok) { if (note) note.textContent = ok ? "Copied." : "Select the secret and copy it."; }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
    return;
  }
  var range = document.createRange();
  range.selectNodeContents(src);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  try { done(document.execCommand("copy")); } catch (e) { done(false); }
});
