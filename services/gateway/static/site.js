// City Events: progressive enhancement only. Every page works without this file.
// It tells the site the browser's time zone (a cookie the server reads to render times in it),
// shows this page's times in that zone right away, and adds a copy button to share links.
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
  // Times of the site (sessions, notifications) in the viewer's zone. An event's own times stay
  // on its venue's clock (data-venue); the viewer's clock goes beside them when it differs.
  document.querySelectorAll("time[datetime]:not([data-venue])").forEach(function (el) {
    var t = new Date(el.getAttribute("datetime"));
    if (!isNaN(t.getTime())) {
      el.textContent = format.format(t) + " (" + zone + ")";
    }
  });
  var clock = function (z) {
    return new Intl.DateTimeFormat(undefined, {
      weekday: "short", day: "numeric", month: "short", year: "numeric",
      hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: z
    });
  };
  document.querySelectorAll("span.local[data-start][data-end][data-zone]").forEach(function (el) {
    var start = new Date(el.getAttribute("data-start"));
    var end = new Date(el.getAttribute("data-end"));
    var venue = el.getAttribute("data-zone");
    if (el.textContent || venue === zone || isNaN(start.getTime()) || isNaN(end.getTime())) {
      return;
    }
    try {
      var mine = clock(zone), theirs = clock(venue);
      if (mine.format(start) === theirs.format(start) && mine.format(end) === theirs.format(end)) {
        return;
      }
      var text = mine.formatRange ? mine.formatRange(start, end) : mine.format(start) + " – " + mine.format(end);
      el.textContent = " · your time: " + text + " (" + zone + ")";
    } catch (e) {
      return;
    }
  });
  // Live updates (server-sent events): the seats and the viewer's place on an event's page, the
  // unread count everywhere when signed in. Without them the page shows what it was rendered with.
  var meta = function (name) {
    var m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.getAttribute("content") : null;
  };
  var liveEvent = meta("live-event");
  var source = null;
  var open = function () {
    source = new EventSource("/live" + (liveEvent ? "?event=" + encodeURIComponent(liveEvent) : ""));
    listen(source);
  };
  // A hidden tab gives its connection back (browsers allow few per site); it reconnects, and is
  // told the state as it is, when shown again.
  document.addEventListener("visibilitychange", function () {
    if (!source) { return; }
    if (document.hidden) {
      source.close();
    } else if (source.readyState === EventSource.CLOSED) {
      open();
    }
  });
  var listen = function (source) {
    source.addEventListener("seats", function (e) {
      var d = JSON.parse(e.data);
      document.querySelectorAll("[data-live-seats]").forEach(function (el) {
        el.textContent = d.text;
        el.classList.toggle("full", !!d.full);
      });
    });
    source.addEventListener("place", function (e) {
      var d = JSON.parse(e.data);
      document.querySelectorAll("[data-live-place]").forEach(function (el) { el.textContent = d.text; });
    });
    source.addEventListener("unread", function (e) {
      var d = JSON.parse(e.data);
      document.querySelectorAll("[data-live-unread]").forEach(function (el) {
        var count = el.querySelector(".count");
        if (count) { count.textContent = String(d.unread); }
        el.hidden = !d.unread;
      });
    });
  };
  if (window.EventSource && (liveEvent !== null || meta("live") !== null)) {
    open();
  }
  // A "Copy" button beside share links; the link itself works without it.
  if (navigator.clipboard) {
    document.querySelectorAll("a[data-copy]").forEach(function (a) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "secondary small";
      button.textContent = "Copy link";
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(a.href).then(function () {
          button.textContent = "Copied";
        }, function () {
          button.textContent = "Copy failed: select the link";
        });
      });
      a.insertAdjacentElement("afterend", button);
    });
  }
}());
