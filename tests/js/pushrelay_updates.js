/*
 * A push-relay long-poll client for the tests, in the shape of django-pushserver's
 * jQuery `updates.js` API, written from the protocol (docs/protocol.md,
 * "Push-relay long-poll"): it is not django-pushserver's code.
 *
 *   $.updates.subscribe({main: "http://host:8013/updates/room?token=..."});
 *   $.updates.registerProcessor("main", "answer", function (data) {});  // by data.type
 *
 * Each channel is asked for its next update, one at a time; the position of the
 * last answer (Last-Modified + Etag) is sent back as If-Modified-Since and
 * If-None-Match. The first request carries the epoch: the oldest update in history.
 */
(function ($) {
  "use strict";

  var EPOCH = {lastModified: "Thu, 01 Jan 1970 00:00:00 GMT", etag: "0"};
  var RETRY = 1000;  // ms after a failure other than "nothing yet" (408)
  var processors = {};  // name -> data.type -> [function]
  var followed = {};  // name -> URL

  function process(name, data) {
    var byType = processors[name] || {};
    var list = data && typeof data === "object" ? byType[data.type] || [] : [];
    for (var i = 0; i < list.length; i++) {
      list[i](data);
    }
  }

  // The position of an answer: Etag, or for browsers that hide it the
  // "etag=" of Cache-Control.
  function positionOf(xhr, previous) {
    var lastModified = xhr.getResponseHeader("Last-Modified");
    var etag = xhr.getResponseHeader("Etag");
    if (etag === null) {
      var found = /etag=(\d+)/.exec(xhr.getResponseHeader("Cache-Control") || "");
      etag = found ? found[1] : null;
    }
    return lastModified !== null && etag !== null
      ? {lastModified: lastModified, etag: etag}
      : previous;
  }

  function follow(name, url) {
    var position = EPOCH;
    function ask() {
      $.ajax({
        url: url,
        type: "GET",
        dataType: "json",
        cache: false,
        xhrFields: {withCredentials: true},
        headers: {"If-Modified-Since": position.lastModified, "If-None-Match": position.etag}
      }).done(function (data, status, xhr) {
        position = positionOf(xhr, position);
        process(name, data);
        ask();
      }).fail(function (xhr) {
        setTimeout(ask, xhr.status === 408 ? 0 : RETRY);
      });
    }
    ask();
  }

  $.updates = {
    subscribe: function (channels) {
      $.each(channels, function (name, url) {
        if (url && !followed[name]) {
          followed[name] = url;
          follow(name, url);
        }
      });
    },
    registerProcessor: function (name, type, fn) {
      var byType = processors[name] = processors[name] || {};
      (byType[type] = byType[type] || []).push(fn);
    }
  };
})(jQuery);
