// City Events: progressive enhancement only. Every page works without this file.
// It tells the site the browser's time zone (a cookie the server reads to render times in it)
// and shows this page's times in that zone right away.
(function () {
  "use strict";
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (e) {
    return;
  }
  if (!zone || !/^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone)) {
    return;
  }
  var known = document.cookie.split("; ").some(function (c) { return c === "ce_tz=" + zone; });
  if (!known) {
    document.cookie = "ce_tz=" + zone + "; Path=/; Max-Age=31536000; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
  }
  var format = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short", year: "numeric",
    hour: "2-digit", minute: "2-digit", timeZone: zone
  });
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var t = new Date(el.getAttribute("datetime"));
    if (!isNaN(t.getTime())) {
      el.textContent = format.format(t) + " (" + zone + ")";
    }
  });
}());
