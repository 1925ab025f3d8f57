//! The description of every operation of the route table, in its order: summaries, the types
//! each takes and answers (from [`cityevents_api`]) and the errors beyond those the gateway
//! itself can send on the route.

use cityevents_api::params::{
    CitiesParams, EventsParams, FeedParams, MyEventsParams, NotificationsParams, PageParams, TrendingParams,
    UsersParams,
};
use cityevents_api::{auth, events, gateway, joins, notifications, reports};

use super::operation::{Spec, op};
use crate::routes::Verb::{Delete, Get, Patch, Post, Put};
use crate::routes::{EVENT_CALENDAR_PATH, FEED_CALENDAR_PATH, FOR_YOU_PATH, INDEX_PATH, OPENAPI_PATH, VIEW_PATH};

/// Every operation's description.
pub(crate) fn all() -> Vec<Spec> {
    vec![
        op(Post, "/api/v1/auth/register", "register", "Create an account")
            .describe(
                "Answers 202 with the normalized address whether the address is new, already has an account, \
                or looks like an account's address (the same UTS #39 skeleton), in the same time: only the mail \
                sent to the address says which (a verification link, `already_registered` or \
                `address_unavailable`). Sign in once the address is verified, or at once (an unverified account \
                may not create events). With `sign_in: true` a new account is signed in: 201 with its first \
                session (the answer then tells whether an account was made, as the web sign-up does).",
            )
            .body::<auth::RegisterRequest>()
            .answer::<auth::Registration>(201, "Made and signed in (`sign_in: true`): the session is in the answer.")
            .answer::<auth::Registration>(202, "Accepted: a mail to the address says what happened.")
            .errors(&[401]),
        op(Post, "/api/v1/auth/login", "login", "Sign in")
            .describe(
                "Failed sign-ins are delayed per account and address, per address, and per account for \
                devices without a `device_token` of the account (`429 locked` with `Retry-After`). A device \
                that signed in before sends the `device_token` it was given and is counted on its own. The \
                access token names its session (`sid`); the session list shows the `User-Agent` and `time_zone`.",
            )
            .body::<auth::LoginRequest>()
            .answer::<auth::TokenPair>(200, "An access and a refresh token.")
            .errors(&[401])
            .error(403, "`account_banned`: the account is banned (the detail gives the reason)."),
        op(Post, "/api/v1/auth/refresh", "refresh", "Exchange a refresh token for a new pair")
            .body::<auth::RefreshRequest>()
            .answer::<auth::TokenPair>(200, "A new pair; the old refresh token is spent.")
            .errors(&[401]),
        op(Post, "/api/v1/auth/logout", "logout", "Revoke a refresh token")
            .body::<auth::RefreshRequest>()
            .empty(204, "Revoked.")
            .errors(&[401]),
        op(
            Post,
            "/api/v1/auth/verify-email/request",
            "requestEmailVerification",
            "Mail a new address-verification \
            link",
        )
        .describe(
            "Mails the caller a new single-use verification link; the previous one stops working. Counted \
                against the strict per-IP rate limit.",
        )
        .empty(202, "A verification mail was requested.")
        .errors(&[409]),
        op(Post, "/api/v1/auth/verify-email", "verifyEmail", "Verify the e-mail address with a mailed token")
            .describe(
                "Spends the token from a verification mail. Unknown, used, replaced and expired tokens get the \
                same 400 `invalid_token`. Access tokens issued afterwards carry `email_verified: true`.",
            )
            .body::<auth::TokenRequest>()
            .empty(204, "The address is verified."),
        op(Post, "/api/v1/auth/password-reset/request", "requestPasswordReset", "Mail a password-reset link")
            .describe(
                "Always 202, in the same time, whether or not an account has the address; if one does, its \
                owner gets a single-use link (app.password_reset_ttl, 1 h) and the previous one stops working. \
                Counted against the strict per-IP rate limit.",
            )
            .body::<auth::EmailRequest>()
            .empty(202, "A mail is on its way if an account has the address."),
        op(Post, "/api/v1/auth/password-reset", "resetPassword", "Choose a new password with a mailed token")
            .describe(
                "Spends the token: the new password is set, every session of the account ends, its sign-in \
                delays are lifted and its address counts as verified; the owner is told by mail. A password the \
                policy refuses leaves the token unspent. Unknown, used, replaced and expired tokens get the same \
                400 `invalid_token`. The answer's device token lets this device sign in however many failures \
                others cause.",
            )
            .body::<auth::PasswordResetRequest>()
            .answer::<auth::PasswordReset>(200, "The password is set; sign in again, with the device token."),
        op(Post, "/api/v1/auth/password-reset/check", "checkPasswordReset", "Check a password-reset token")
            .describe(
                "Spends nothing: 204 while the token can still choose a password (unspent, unexpired, its \
                account not banned), else the same 400 `invalid_token` as `resetPassword`. A page shows the \
                new-password form only after it. Counted against the strict per-IP rate limit.",
            )
            .body::<auth::TokenRequest>()
            .empty(204, "The token can be used."),
        op(Post, "/api/v1/auth/password", "changePassword", "Change the caller's password")
            .describe(
                "The current password is required (a wrong one counts as a failed sign-in: 400 naming \
                `current_password`, then 429 `locked` like sign-in). Every session ends; the answer is a fresh \
                pair for the caller. The owner is told by mail.",
            )
            .body::<auth::PasswordChangeRequest>()
            .answer::<auth::TokenPair>(200, "A new pair; every other session is signed out."),
        op(Post, "/api/v1/auth/logout-all", "logoutAll", "Sign out everywhere")
            .describe("Revokes every refresh token of the caller; access tokens already issued expire on their own.")
            .empty(204, "Every session ended."),
        op(Get, "/api/v1/auth/sessions", "listSessions", "The caller's live sessions")
            .describe(
                "One per sign-in whose refresh token is still usable, most recently used first: its device (from \
                the sign-in's `User-Agent`), roughly where it came from (the city of the `time_zone` the sign-in \
                gave and its network, worked out at sign-in), and whether it is the caller's own.",
            )
            .answer::<auth::SessionList>(200, "The sessions."),
        op(Delete, "/api/v1/auth/sessions/{id}", "revokeSession", "End one of the caller's sessions")
            .empty(204, "The session ended."),
        op(Get, "/api/v1/me", "me", "The caller's account").answer::<auth::User>(200, "The caller."),
        op(Get, "/api/v1/profiles/{id}", "profile", "A person's public profile")
            .describe("What their organizer page shows: name, bio, since when they are a member. 404 for an unknown or banned account.")
            .answer::<auth::Profile>(200, "The profile."),
        op(Patch, "/api/v1/me/profile", "updateProfile", "Change the caller's name or bio")
            .body::<auth::ProfilePatch>()
            .answer::<auth::Profile>(200, "The profile as it is now."),
        op(Get, "/api/v1/admin/users", "listUsers", "List and search accounts (admin)")
            .describe(
                "Newest first. `q` holding `@` is an address, matched exactly (addresses are stored \
                encrypted); otherwise part of a name, case-insensitive.",
            )
            .query::<UsersParams>()
            .answer::<auth::ManagedUserPage>(200, "A page of accounts.")
            .errors(&[403]),
        op(Put, "/api/v1/admin/users/{id}/role", "setRole", "Change a user's role: user, moderator or admin (admin)")
            .describe(
                "Only an admin may call it. The change is in the audit log; the user's tokens carry the new \
                role from their next refresh.",
            )
            .body::<auth::RoleRequest>()
            .answer::<auth::User>(200, "The user with the new role.")
            .errors(&[403]),
        op(Post, "/api/v1/admin/users/{id}/ban", "banUser", "Ban an account (moderator or admin)")
            .describe(
                "The account cannot sign in (403 `account_banned`, with the reason), every session ends at \
                once and its events are hidden. A repeat answers the ban there is. 409 `cannot_ban_self`, \
                `cannot_ban_admin`; only an admin bans a moderator (403). Audited.",
            )
            .body::<auth::AccountBanRequest>()
            .answer::<auth::ManagedUser>(200, "The account, banned.")
            .errors(&[403, 409]),
        op(Delete, "/api/v1/admin/users/{id}/ban", "unbanUser", "Lift an account's ban (moderator or admin)")
            .describe(
                "The account may sign in again and its events show again. 404 `ban_not_found` when it is not \
                banned; only an admin lifts a moderator's ban. Audited.",
            )
            .answer::<auth::ManagedUser>(200, "The account, not banned.")
            .errors(&[403]),
        op(Post, "/api/v1/admin/users/{id}/avatar/remove", "removeUserAvatar", "Take down an account's picture (moderator or admin)")
            .describe(
                "The account shows no picture (204, also when it had none) and the picture's URLs answer 404 at \
                once; its owner may upload another. The reason is kept in the audit log \
                (`moderation.avatar_remove`). 403 for a moderator's or an admin's picture unless by an admin; 404 \
                for an unknown account.",
            )
            .body::<auth::AccountBanRequest>()
            .empty(204, "The picture is taken down.")
            .errors(&[403]),
        op(Post, "/api/v1/admin/users/{id}/logout-all", "endUserSessions", "End every session of an account (admin)")
            .describe(
                "As the owner's *sign out everywhere*, without a ban: refresh tokens and a pending reset link \
                are revoked and access tokens refused everywhere within seconds; the owner may sign in again. 404 for an \
                unknown account. Audited.",
            )
            .empty(204, "Every session ended.")
            .errors(&[403, 404]),
        op(Get, "/api/v1/events", "listEvents", "Published events")
            .query::<EventsParams>()
            .answer::<gateway::EventPage>(200, "A page of events."),
        op(Post, "/api/v1/events", "createEvent", "Create an event (a draft)")
            .describe(
                "A caller whose e-mail address is not verified gets 403 `email_unverified` \
                (`app.require_verified_email` of the events service).",
            )
            .body::<events::NewEvent>()
            .answer::<events::Event>(201, "The draft.")
            .header("Location", "The event's path.")
            .errors(&[403]),
        op(Post, "/api/v1/events/batch", "batchEvents", "Several events by id")
            .body::<events::BatchRequest>()
            .answer::<events::BatchResponse>(200, "The visible ones, by id."),
        op(Get, "/api/v1/events/{id}", "getEvent", "One event").answer::<events::Event>(200, "The event."),
        op(Patch, "/api/v1/events/{id}", "updateEvent", "Change an event (organizer)")
            .body::<events::EventPatch>()
            .answer::<events::Event>(200, "The event.")
            .errors(&[403, 409]),
        op(Post, "/api/v1/events/{id}/publish", "publishEvent", "Publish a draft (organizer)")
            .answer::<events::Event>(200, "The published event.")
            .errors(&[403, 409]),
        op(
            Post,
            "/api/v1/events/{id}/cancel",
            "cancelEvent",
            "Cancel an event (organizer; moderator or admin with a \
            reason); every join is canceled",
        )
        .optional_body::<events::ReasonBody>()
        .answer::<events::Event>(200, "The canceled event.")
        .errors(&[403, 409]),
        op(
            Post,
            "/api/v1/events/{id}/unpublish",
            "unpublishEvent",
            "Take a published event back to draft (organizer \
            while nobody joined; moderator or admin with a reason, every join canceled)",
        )
        .describe(
            "The organizer may while nobody holds a seat or waits (409 `event_has_participants` otherwise: \
                cancel instead; 503 when the joins service cannot tell). A moderator or admin may whatever the \
                joins, giving a reason; every join is then canceled (reason `event_unpublished`). 409 \
                `not_published`, `event_canceled`, `event_ended`.",
        )
        .optional_body::<events::ReasonBody>()
        .answer::<events::Event>(200, "The event, a draft again.")
        .errors(&[403, 409]),
        op(Get, "/api/v1/events/{id}/online-link", "eventOnlineLink", "An online event's join link")
            .describe(
                "For the organizer, moderators and admins, and the users who hold a seat (the joins service is \
                asked; 503 when it cannot tell). 403 `seat_required` to anyone else; 404 when the event is not \
                online; 409 `event_canceled`. `Cache-Control: private, no-store`.",
            )
            .answer::<events::OnlineLink>(200, "The link.")
            .errors(&[403, 409]),
        op(Put, "/api/v1/me/avatar", "putAvatar", "Set your picture")
            .describe(
                "Judged by its content, not its name or type (400 `INVALID_IMAGE`; 400 `IMAGE_DIMENSIONS` past \
                8000 pixels a side or 16 megapixels; 413 past 5 MiB), decoded, turned upright, stripped of its \
                metadata (EXIF, GPS) and stored as a 96×96 and a 400×400 JPEG named by their content (`avatar` \
                of the profile answered). 503 `IMAGES_BUSY` while this instance is decoding as many pictures as \
                it allows. The files of a replaced picture are deleted after a grace period.",
            )
            .upload()
            .answer::<auth::Profile>(200, "Your profile with its new `avatar`.")
            .errors(&[]),
        op(Delete, "/api/v1/me/avatar", "deleteAvatar", "Remove your picture")
            .describe("Also when there is none.")
            .empty(204, "No picture."),
        op(Get, "/api/v1/profiles/{id}/avatar/{hash}/{file}", "avatar", "A person's picture")
            .describe(
                "As the profile's `avatar` names it. `Cache-Control: public, max-age=31536000, immutable`: the \
                URL names the content, a new picture gets a new URL.",
            )
            .jpeg(200, "The JPEG.")
            .header("Cache-Control", "`public, max-age=31536000, immutable`"),
        op(Put, "/api/v1/events/{id}/cover", "putEventCover", "Set an event's cover picture")
            .describe(
                "The organizer's only, while the event may be changed (409 `event_canceled`, `event_ended`). The \
                picture is judged by its content, not its name or type (400 `INVALID_IMAGE`; 400 \
                `IMAGE_DIMENSIONS` past 8000 pixels a side or 16 megapixels; 413 past 5 MiB), decoded, turned \
                upright, stripped of its metadata (EXIF, GPS) and stored as a 640×360 and a 1280×720 JPEG named \
                by their content (`cover` of the event answered). 503 `IMAGES_BUSY` while this instance is \
                decoding as many pictures as it allows. The files of a replaced cover are deleted after a grace \
                period.",
            )
            .upload()
            .answer::<events::Event>(200, "The event with its new `cover`.")
            .errors(&[403, 409]),
        op(Delete, "/api/v1/events/{id}/cover", "deleteEventCover", "Remove an event's cover picture")
            .describe(
                "The organizer's while the event may change (409 `event_canceled`, `event_ended`); a moderator's \
                or admin's at any time. 204 also when there is none.",
            )
            .empty(204, "No cover.")
            .errors(&[403, 409]),
        op(Get, "/api/v1/events/{id}/cover/{hash}/{file}", "eventCover", "An event's cover picture")
            .describe(
                "As the event's `cover` names it. `Cache-Control: public, max-age=31536000, immutable`: the \
                URL names the content, a new picture gets a new URL.",
            )
            .jpeg(200, "The JPEG.")
            .header("Cache-Control", "`public, max-age=31536000, immutable`"),
        op(Get, "/api/v1/events/trending", "trendingEvents", "Events trending now")
            .describe(
                "Published events that have not ended, scored by the distinct people who viewed them (the event's \
                page on the site or `GET /api/v1/events/{id}/view`) plus three times the distinct people who \
                joined them (a seat or the waitlist), over this UTC day and the one before, highest first; \
                events nobody looked at are left out. A person counts once per event and day however often \
                they look or join.",
            )
            .query::<TrendingParams>()
            .answer::<gateway::EventFeed>(200, "The events, each with `seats`."),
        op(Get, "/api/v1/me/events", "myEvents", "Events the caller organizes (drafts included)")
            .query::<MyEventsParams>()
            .answer::<gateway::EventPage>(200, "A page of events."),
        op(Get, "/api/v1/meta/cities", "cities", "City suggestions")
            .describe(
                "Cities of published events that have not ended, whose name starts with `q` (case-insensitive; \
                every city without `q`), most events first, then by name.",
            )
            .query::<CitiesParams>()
            .answer::<events::CityList>(200, "The cities."),
        op(Post, "/api/v1/reports", "report", "Report an event or an account to the moderators")
            .describe(
                "A member reports an event they can see or an account, never their own, with a reason (`other` \
                needs `details`). 409 `already_reported` while their report on it is open, `own_content`, \
                `enough_reports` once the target has `app.reports.max_open_per_target` open; 429 \
                `too_many_reports` past `app.reports.per_reporter_per_hour` (with `Retry-After`); 404 \
                `target_not_found` for an event they cannot see or an account that does not exist. The limits \
                hold for reports sent at once too. The reporter is told the outcome as a notification \
                (`report.resolved`); moderators never see who reported.",
            )
            .body::<reports::NewReport>()
            .answer::<reports::Report>(201, "The report, open.")
            .errors(&[404, 409]),
        op(Get, "/api/v1/moderation/reports", "reportQueue", "The moderators' queue of reports (moderator or admin)")
            .describe(
                "The targets with open reports, the most reported first, then the longest waiting (50 at most), \
                each with its newest ten reports (reason, details, when; not who sent them) and, for an event, its \
                title, status, organizer, start and city.",
            )
            .answer::<reports::Queue>(200, "The queue.")
            .errors(&[403]),
        op(Post, "/api/v1/moderation/reports/resolve", "resolveReports", "Resolve a target's reports (moderator or admin)")
            .describe(
                "Closes every open report on the target with the outcome of what the moderator did (through the \
                events' or accounts' own routes: unpublish, cancel, ban, remove the picture; an event is not \
                `picture_removed`, an account not `unpublished` or `canceled`: 400). Audited \
                (`moderation.report.resolve`); each reporter is told. 403 `own_report_target` when the caller is \
                the reported account or the reported event's organizer; 409 `outcome_mismatch` when the event is \
                not in the state the outcome says (`unpublished`: a draft, `canceled`: canceled); 404 \
                `no_open_reports`.",
            )
            .body::<reports::Resolve>()
            .answer::<reports::Resolved>(200, "How many reports were closed.")
            .errors(&[403, 404, 409]),
        op(Get, EVENT_CALENDAR_PATH, "eventCalendar", "The event as an iCalendar file")
            .describe(
                "RFC 5545, times in the venue's zone with its `VTIMEZONE`. `METHOD:PUBLISH`, or `METHOD:CANCEL` \
                with `STATUS:CANCELLED` once the event is canceled; `SEQUENCE` is the event's version, so a \
                calendar that imported it replaces its copy. A draft answers its organizer only.",
            )
            .calendar(200, "The event's `.ics` (`Content-Disposition: attachment`).")
            .header("Content-Disposition", "`attachment; filename=\"event-{id}.ics\"`."),
        op(Get, FEED_CALENDAR_PATH, "calendarFeed", "A personal calendar feed (the secret in the path is the key)")
            .describe(
                "What a calendar application subscribes to: the events the feed's owner holds a seat at \
                (`STATUS:CONFIRMED`) or waits for (`TENTATIVE`), and those canceled while they did \
                (`CANCELLED`), from 30 days back, soonest first, 100 at most. No bearer: whoever has the \
                address reads it, until its owner makes a new one or revokes it (then 404).",
            )
            .calendar(200, "The feed."),
        op(Get, FOR_YOU_PATH, "forYou", "Events for the caller")
            .describe(
                "Published events that have not ended by organizers the caller follows, in their home city \
                (their profile's) or in the categories of events they joined, in that order of weight, then \
                soonest; events they joined are left out. Made of what the notifier, joins and auth services \
                say: one that cannot answer leaves its part out. `Cache-Control: private, no-store`.",
            )
            .query::<FeedParams>()
            .answer::<gateway::EventFeed>(200, "The events, each with `seats`."),
        op(Post, "/api/v1/events/{id}/join", "joinEvent", "Join an event")
            .describe(
                "Confirmed while seats are left, else waitlisted (FIFO). A banned user gets 403 `banned`, also \
                when replaying the `Idempotency-Key` of a join the ban ended; the event's organizer gets 403 \
                `organizer_cannot_join`. An event published a moment ago that joins has not heard of yet is \
                waited for briefly, then 503 `event_not_ready` with `Retry-After`.",
            )
            .idempotency_key()
            .answer::<joins::Join>(
                201,
                "Confirmed, or on the waitlist (a retry with the same key gets the same \
                answer).",
            )
            .errors(&[403, 409]),
        op(Delete, "/api/v1/events/{id}/join", "leaveEvent", "Leave an event")
            .empty(204, "Left; the first waitlisted user, if any, gets the seat."),
        op(Get, "/api/v1/events/{id}/join", "myParticipation", "The caller's participation")
            .answer::<joins::Join>(200, "The participation."),
        op(Get, "/api/v1/me/joins", "myJoins", "The caller's joins")
            .query::<PageParams>()
            .answer::<joins::JoinPage>(200, "A page of joins."),
        op(
            Get,
            "/api/v1/events/{id}/participants",
            "participants",
            "Confirmed participants (organizer, moderator or \
            admin)",
        )
        .query::<PageParams>()
        .answer::<joins::ParticipantPage>(200, "A page of participants.")
        .errors(&[403]),
        op(Get, "/api/v1/events/{id}/waitlist", "waitlist", "The waitlist in order (organizer, moderator or admin)")
            .query::<PageParams>()
            .answer::<joins::ParticipantPage>(200, "A page of waitlisted users.")
            .errors(&[403]),
        op(Get, "/api/v1/events/{id}/stats", "stats", "Join statistics (organizer, moderator or admin)")
            .answer::<joins::Stats>(200, "The statistics.")
            .errors(&[403]),
        op(
            Delete,
            "/api/v1/events/{id}/participants/{user_id}",
            "kick",
            "Remove a participant (organizer, moderator \
            or admin)",
        )
        .empty(204, "Removed.")
        .errors(&[403]),
        op(
            Post,
            "/api/v1/events/{id}/bans",
            "ban",
            "Ban a participant or waitlisted user from an event (organizer, \
            moderator or admin); ends their join",
        )
        .describe(
            "The organizer cannot be banned (409 `cannot_ban_organizer`), nor a user without a join (404 \
                `not_a_participant`). A repeated ban changes nothing and answers 200 with the ban there is.",
        )
        .body::<joins::BanRequest>()
        .answer::<joins::Ban>(200, "Already banned: the existing ban.")
        .answer::<joins::Ban>(201, "Banned.")
        .errors(&[403, 409]),
        op(
            Get,
            "/api/v1/events/{id}/bans",
            "listBans",
            "The event's bans, oldest first (organizer, moderator or \
            admin)",
        )
        .query::<PageParams>()
        .answer::<joins::BanPage>(200, "A page of bans.")
        .errors(&[403]),
        op(
            Delete,
            "/api/v1/events/{id}/bans/{user_id}",
            "unban",
            "Lift a ban (organizer, moderator or admin); the \
            user may join again",
        )
        .describe("404 `ban_not_found` when the user is not banned.")
        .empty(204, "Lifted.")
        .errors(&[403]),
        op(Get, "/api/v1/events/{id}/counts", "counts", "Seat counts").answer::<joins::Counts>(200, "The counts."),
        op(Get, "/api/v1/me/notifications", "myNotifications", "The caller's notifications, newest first")
            .query::<NotificationsParams>()
            .answer::<notifications::NotificationPage>(200, "A page of notifications."),
        op(Post, "/api/v1/me/notifications/{id}/read", "markRead", "Mark a notification read (idempotent)")
            .empty(204, "Read."),
        op(Get, "/api/v1/me/notifications/unread-count", "unreadCount", "How many of my notifications are unread")
            .answer::<notifications::UnreadCount>(200, "The count."),
        op(Post, "/api/v1/me/notifications/read-all", "markAllRead", "Mark all my notifications read")
            .answer::<notifications::Marked>(200, "How many were unread and are now read (0 when none was)."),
        op(Get, "/api/v1/me/mail-preferences", "getMailPreferences", "The caller's mail preferences")
            .answer::<notifications::MailPreferences>(200, "Whether each kind of mail is sent."),
        op(Put, "/api/v1/me/mail-preferences", "setMailPreferences", "Turn kinds of mail off or on")
            .describe(
                "Sets the kinds named in the body; the others stay as they are. Account-security mail \
                (verification, password) cannot be turned off.",
            )
            .body::<notifications::MailPreferencesPatch>()
            .answer::<notifications::MailPreferences>(200, "Every preference after the change."),
        op(Get, "/api/v1/organizers/{id}/follow", "myFollow", "Whether the caller follows an organizer")
            .answer::<notifications::Follow>(200, "The caller follows them.")
            .error(404, "`not_following`: the caller does not follow them."),
        op(Put, "/api/v1/organizers/{id}/follow", "follow", "Follow an organizer")
            .describe(
                "The caller is then told, in the app and by mail (`followed_published`, unless turned off), when the \
                organizer publishes an event. A repeat answers the follow there is. 409 `cannot_follow_self`; 404 \
                `organizer_not_found` for someone who has not published an event.",
            )
            .answer::<notifications::Follow>(200, "Followed.")
            .errors(&[409]),
        op(Delete, "/api/v1/organizers/{id}/follow", "unfollow", "Stop following an organizer")
            .empty(204, "Not following (also when the caller did not)."),
        op(Get, "/api/v1/organizers/{id}/followers", "followers", "How many people follow an organizer")
            .answer::<notifications::Followers>(200, "The count."),
        op(Get, "/api/v1/me/following", "following", "The organizers the caller follows")
            .query::<PageParams>()
            .answer::<notifications::FollowPage>(200, "A page of follows, newest first."),
        op(Get, "/api/v1/me/calendar-feed", "myCalendarFeed", "Whether the caller has a personal calendar feed")
            .answer::<joins::CalendarFeed>(200, "The feed's state (its address is shown only when made)."),
        op(Post, "/api/v1/me/calendar-feed", "newCalendarFeed", "Make a new personal calendar feed address")
            .describe(
                "A new secret address for `GET /api/v1/calendars/{token}/events.ics`, shown this once (only \
                its hash is kept). Any previous address of the caller stops working at once.",
            )
            .answer::<joins::NewCalendarFeed>(201, "The new address."),
        op(Delete, "/api/v1/me/calendar-feed", "revokeCalendarFeed", "Revoke the caller's calendar feed address")
            .empty(204, "The address no longer works."),
        op(Get, VIEW_PATH, "eventView", "Event page: the event, the caller's participation and the counts")
            .describe(
                "The event is required: its error is the answer. Participation (with a token) and counts are \
                optional parts. An answered page counts as a view of the event for `GET /api/v1/events/trending` \
                (once per person and day).",
            )
            .answer::<gateway::EventView>(200, "Fetched in parallel; a failing part is `{\"unavailable\": true}`."),
        op(Get, OPENAPI_PATH, "openapi", "This document").answer_object(200, "OpenAPI 3.1.").errors(&[502, 503, 504]),
        op(Get, INDEX_PATH, "index", "Where to start")
            .describe("Links to this API's OpenAPI document and its main collections.")
            .answer::<gateway::ApiIndex>(200, "The index."),
    ]
}
